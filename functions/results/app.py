"""Results Lambda: on a Batch job state change, posts the task's results to the platform."""

from scanbridge.entrypoints.lambda_results import handler

__all__ = ["handler"]
