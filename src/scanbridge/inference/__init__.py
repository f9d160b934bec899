"""Inference: built-in ONNX models, sessions, the tile pipeline and post-processing."""
