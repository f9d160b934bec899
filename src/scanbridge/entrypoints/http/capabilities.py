"""`GET /config/available`: what this bridge can do (models, formats, limits, routes, version)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from scanbridge import __version__
from scanbridge.entrypoints.http.deps import LiveTenant, Models, SettingsDep
from scanbridge.services.capabilities import capabilities

router = APIRouter(tags=["live"])


@router.get("/config/available", tags=["meta"])
def config_available(request: Request, _caller: LiveTenant, models: Models, settings: SettingsDep) -> dict[str, Any]:
    """Models with their specs, formats, DICOM transfer syntaxes, limits, routes and version."""
    return capabilities(settings, models, __version__, unavailable=request.app.state.unavailable_routes)
