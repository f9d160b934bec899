"""Who is calling: webhook signatures (Standard Webhooks), tenant API keys, the admin token.

Each protection is off until its variable is set (local mode logs a warning), and template.yaml sets
them all on AWS.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from fastapi import Request

from scanbridge.config import Settings
from scanbridge.domain.errors import AuthError, ForbiddenError
from scanbridge.entrypoints.webhook_common import verify_webhook

__all__ = ["Principal", "admin", "principal", "verify_webhook", "warn_open"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """The caller: a tenant (company_id) or an admin (sees every tenant)."""

    company_id: str | None
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The company a query is limited to (None: all)."""
        return None if self.admin else self.company_id


def _credential(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def principal(request: Request) -> Principal:
    """The caller of a REST read: a tenant by API key, the admin by token, or anyone in open local mode."""
    settings: Settings = request.app.state.container.settings
    token = _credential(request)
    if settings.admin_token and token and hmac.compare_digest(token, settings.admin_token):
        return Principal(company_id=None, admin=True)
    keys = settings.api_key_map()
    if not keys:
        return Principal(company_id=None, admin=True)  # open local mode (warned about at start-up)
    if token is None:
        raise AuthError("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    for key, company in keys.items():
        if hmac.compare_digest(token, key):
            return Principal(company_id=company)
    raise AuthError("the API key is not valid")


def admin(request: Request) -> Principal:
    """The caller of an admin route: 401 without a token, 403 with a wrong one (open when none is set)."""
    settings: Settings = request.app.state.container.settings
    if not settings.admin_token:
        return Principal(company_id=None, admin=True)
    token = _credential(request)
    if token is None:
        raise AuthError("the admin token is required (Authorization: Bearer <SCANBRIDGE_ADMIN_TOKEN>)")
    if not hmac.compare_digest(token, settings.admin_token):
        raise ForbiddenError("the admin token is not valid")
    return Principal(company_id=None, admin=True)


def warn_open(settings: Settings) -> None:
    """Log one warning per protection that is switched off."""
    if not settings.webhook_secret:
        log.warning("SCANBRIDGE_WEBHOOK_SECRET is not set: webhooks are accepted unsigned (local mode)")
    if not settings.api_keys:
        log.warning("SCANBRIDGE_API_KEYS is not set: task reads are open to anyone who can reach the API")
    if not settings.admin_token:
        log.warning("SCANBRIDGE_ADMIN_TOKEN is not set: admin routes are open")
