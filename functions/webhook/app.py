"""Webhook Lambda: POST /webhook on Powertools' HTTP resolver (no FastAPI: the fastest cold start)."""

from scanbridge.entrypoints.lambda_webhook import handler

__all__ = ["handler"]
