"""Distillery's engine: datasets, teachers, students, losses, training, export and quantization.

A pure library (no Django, no Celery); submodules are imported where needed so that importing the
package stays cheap.
"""
