"""Who is calling: webhook signatures (Standard Webhooks), tenant API keys, the admin token.

Each protection is off until its variable is set (local mode logs a warning), and template.yaml sets
them all on AWS. They never fail open: once any credential setting is present (API keys, admin token,
webhook secret), the admin routes need the admin token (closed, 403, while none is set), and with none
present ("open local mode") every route answers loopback `Host` names only (DNS-rebinding protection).
Credentials of any bytes compare in constant time as SHA-256 digests of their UTF-8 bytes (401, never 500).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass

from fastapi import Request

from scanbridge.config import Settings
from scanbridge.domain.errors import AuthError, ForbiddenError
from scanbridge.entrypoints.webhook_common import verify_webhook

__all__ = ["Principal", "admin", "host_allowed", "is_open", "principal", "same_secret", "verify_webhook",
           "warn_open"]

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


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two credentials of any characters (digests of their bytes)."""
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def is_open(settings: Settings) -> bool:
    """Open local mode: no credential setting at all (no API keys, admin token or webhook secret)."""
    return not (settings.api_keys.strip() or settings.admin_token or settings.webhook_secret)


LOOPBACK_NAMES = ("localhost",)


def host_allowed(host_header: str, extra: str = "") -> bool:
    """Whether a `Host` header names this machine's loopback (localhost, *.localhost, 127/8, ::1; any port)
    or one of the `extra` names (SCANBRIDGE_ALLOWED_HOSTS, comma-separated, any port)."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    if name and name in {n.strip().lower() for n in extra.split(",") if n.strip()}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _text(header: str) -> str:
    """A header value as the text its sender wrote (ASGI servers decode header bytes as latin-1)."""
    return header.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _credential(request: Request) -> str | None:
    auth = _text(request.headers.get("authorization", ""))
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return _text(request.headers.get("x-api-key", "")) or None


def principal(request: Request) -> Principal:
    """The caller of a REST read: a tenant by API key, the admin by token, or anyone in open local mode."""
    settings: Settings = request.app.state.container.settings
    token = _credential(request)
    if settings.admin_token and token and same_secret(token, settings.admin_token):
        return Principal(company_id=None, admin=True)
    keys = settings.api_key_map()
    if not keys:
        # no tenant keys: reads are open (warned about at start-up); admin powers only in open local mode
        return Principal(company_id=None, admin=is_open(settings))
    if token is None:
        raise AuthError("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    found = None
    for key, company in keys.items():  # every key compared: the time does not tell which one matched
        if same_secret(token, key) and found is None:
            found = company
    if found is not None:
        return Principal(company_id=found)
    raise AuthError("the API key is not valid")


def admin(request: Request) -> Principal:
    """The caller of an admin route: 401 without a token, 403 with a wrong one.

    Open only in open local mode; with another credential set but no admin token, closed (403).
    """
    settings: Settings = request.app.state.container.settings
    if not settings.admin_token:
        if is_open(settings):
            return Principal(company_id=None, admin=True)
        raise ForbiddenError("admin routes are closed: credentials are configured but SCANBRIDGE_ADMIN_TOKEN "
                             "is not set")
    token = _credential(request)
    if token is None:
        raise AuthError("the admin token is required (Authorization: Bearer <SCANBRIDGE_ADMIN_TOKEN>)")
    if not same_secret(token, settings.admin_token):
        raise ForbiddenError("the admin token is not valid")
    return Principal(company_id=None, admin=True)


def warn_open(settings: Settings) -> None:
    """Log one warning per protection that is switched off."""
    if not settings.webhook_secret:
        log.warning("SCANBRIDGE_WEBHOOK_SECRET is not set: webhooks are accepted unsigned (local mode)")
    if not settings.api_keys:
        log.warning("SCANBRIDGE_API_KEYS is not set: task reads are open to anyone who can reach the API")
    if not settings.admin_token:
        if is_open(settings):
            log.warning("SCANBRIDGE_ADMIN_TOKEN is not set: admin routes are open (open local mode, loopback "
                        "Host names only)")
        else:
            log.warning("SCANBRIDGE_ADMIN_TOKEN is not set but other credentials are: admin routes are closed")
