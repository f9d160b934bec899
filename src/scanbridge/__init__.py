"""scanbridge: a webhook bridge between digital-pathology platforms and ONNX models."""

__version__ = "0.1.0"
