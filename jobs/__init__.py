"""Runs, datasets, teachers, artifacts and agents: Distillery's Django app."""
