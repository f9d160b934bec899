"""API Lambda: the FastAPI app behind Mangum (webhook intake + REST); logic lives in scanbridge."""

from scanbridge.entrypoints.lambda_api import handler

__all__ = ["handler"]
