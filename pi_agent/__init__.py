"""Distillery's device agent: benchmarks ONNX students on a Raspberry Pi (no torch, no Django)."""
