"""`GET /health`: liveness, version, the models and the launcher."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from scanbridge import __version__
from scanbridge.entrypoints.http.deps import Models, SettingsDep

router = APIRouter()


@router.get("/health", tags=["meta"])
def health(models: Models, settings: SettingsDep) -> dict[str, Any]:
    """Liveness, version and the models this bridge offers."""
    return {"status": "ok", "version": __version__, "models": models.names(), "launcher": settings.launcher}
