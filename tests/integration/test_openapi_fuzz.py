"""schemathesis against the app's own OpenAPI schema: whatever it sends, no server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import bootstrap
from scanbridge.config import Settings
from scanbridge.entrypoints.http.app import create_app
from tests.conftest import ScriptedPlatform

_container = bootstrap(Settings(platform_url="http://127.0.0.1:9", delivery_backoff_s=0.0), tasks=MemoryTaskStore(),
                       artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(), launcher=MemoryJobLauncher(),
                       platform=ScriptedPlatform(), sleep=lambda _s: None)
app = create_app(_container)
# Random requests only: schemathesis' coverage phase (its deterministic edge cases, built at collection on every
# xdist worker) runs in test_openapi_contract.py against the same app with every check, this one included.
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(
    {"phases": {"coverage": {"enabled": False}}}))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.filterwarnings("ignore")
def test_no_server_errors(case: schemathesis.Case) -> None:
    # GIVEN any request the schema allows (and malformed ones) / WHEN sent / THEN never a 5xx
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        # AND every error has the uniform body
        assert set(response.json()["error"]) == {"code", "message", "details"}
