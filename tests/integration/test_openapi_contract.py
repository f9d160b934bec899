"""OpenAPI tells the truth (issue #16): schemathesis with ALL its checks against the in-process app.

Status codes, content types and bodies must match what each operation declares (errors in the envelope),
schema-valid requests must be accepted and schema-invalid ones refused, 405s carry `Allow`.

Three operations take content that no JSON Schema can describe, and for them alone a 422 counts as
an accepted answer to schema-valid data (`positive_data_acceptance`): PUT /admin/models/{name} (the
ONNX file must be a model matching its config), POST /v1/evaluate (two GeoJSONs / .npy masks whose
objects fit the rasteriser) and GET /tasks (`cursor` is an opaque token from a previous page).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
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

_OPAQUE = {"checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "401", "403", "404", "409", "422"]}}}
CONFIG = SchemathesisConfig.from_dict({"operations": [
    {"include-path": "/admin/models/{name}", "include-method": "PUT", **_OPAQUE},
    {"include-path": "/v1/evaluate", **_OPAQUE},
    {"include-path": "/tasks", "include-method": "GET", **_OPAQUE},
]})

_container = bootstrap(Settings(platform_url="http://127.0.0.1:9", delivery_backoff_s=0.0), tasks=MemoryTaskStore(),
                       artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(), launcher=MemoryJobLauncher(),
                       platform=ScriptedPlatform(), sleep=lambda _s: None)
app = create_app(_container)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate], database=None)
@pytest.mark.filterwarnings("ignore")
def test_every_check_passes(case: schemathesis.Case) -> None:
    # GIVEN any request the schema allows or forbids / WHEN sent / THEN every schemathesis check passes
    case.call_and_validate()


def test_every_operation_declares_the_error_envelope() -> None:
    # GIVEN the OpenAPI document / THEN every operation declares its errors with the {"error": ...} schema
    spec = app.openapi()
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
            assert {421, 422} <= set(errors), (method, path)
            assert all(r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                       for r in errors.values()), (method, path)
            if "{" in path:
                assert 404 in errors, (method, path)
    assert {401, 403} <= {int(s) for s in spec["paths"]["/admin/models/{name}"]["delete"]["responses"]}
    assert {401, 409, 413} <= {int(s) for s in spec["paths"]["/webhook"]["post"]["responses"]}
