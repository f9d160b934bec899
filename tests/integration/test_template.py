"""template.yaml, functions/ and events/: the deployment shape stays lint-clean and keeps its promises."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
EVENTS = REPO / "events"
SECRET_WORDS = ("JWT", "TOKEN", "SECRET")


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short-form tags (!Ref, !GetAtt, !Sub...) as {"Fn": value}."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    with open(TEMPLATE, encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=CfnLoader)
    return data


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = template["Resources"]
    return result


def _functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: res["Properties"] for name, res in resources.items()
            if res["Type"] == "AWS::Serverless::Function"}


def test_cfn_lint_reports_nothing() -> None:
    # GIVEN cfn-lint is installed
    if importlib.util.find_spec("cfnlint") is None:
        pytest.skip("cfn-lint is not installed")
    # WHEN it lints template.yaml
    # (cfnlint has no __main__; this is what the cfn-lint console script runs)
    runner = "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", runner, str(TEMPLATE)], cwd=REPO,
                          capture_output=True, text=True, timeout=240, check=False)
    # THEN it finds nothing
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_job_definition_carries_no_credentials(resources: dict[str, Any]) -> None:
    # GIVEN the worker's job definition (Batch echoes parameters and environment in its events)
    container = resources["WorkerJobDefinition"]["Properties"]["ContainerProperties"]
    # WHEN we read its environment names
    names = [item["Name"] for item in container["Environment"]]
    # THEN none of them is a token, a JWT or a secret
    assert names
    assert not [n for n in names if any(word in n.upper() for word in SECRET_WORDS)], names
    assert not container.get("Secrets")


def test_job_command_and_parameters_pass_only_the_task_id(resources: dict[str, Any]) -> None:
    # GIVEN the worker's job definition
    props = resources["WorkerJobDefinition"]["Properties"]
    # WHEN we read its command and its parameters
    command = props["ContainerProperties"]["Command"]
    placeholders = [part for part in command if part.startswith("Ref::")]
    # THEN the only thing substituted at submit time is the task id
    assert command == ["scanbridge", "worker", "--task-id", "Ref::task_id"]
    assert placeholders == ["Ref::task_id"]
    assert set(props["Parameters"]) == {"task_id"}


def test_every_function_code_dir_exists_with_a_thin_handler(resources: dict[str, Any]) -> None:
    # GIVEN every Lambda function of the template
    functions = _functions(resources)
    assert set(functions) >= {"ApiFunction", "ResultsFunction"}
    for name, props in functions.items():
        # WHEN we look at its CodeUri folder
        code_dir = REPO / props["CodeUri"]
        module, _, attr = props["Handler"].partition(".")
        app = code_dir / f"{module}.py"
        # THEN the folder and its handler module exist, and the module is a few lines of glue
        assert code_dir.is_dir(), f"{name}: {code_dir} is missing"
        assert app.is_file(), f"{name}: {app} is missing"
        source = app.read_text(encoding="utf-8")
        assert len(source.splitlines()) < 15, f"{name}: {app} holds logic; move it to src/scanbridge"
        assert attr in source
        assert "boto3" not in source


def test_every_event_file_is_json() -> None:
    # GIVEN the sample events that `sam local invoke -e` and the tests replay
    files = sorted(EVENTS.glob("*.json"))
    assert files, "events/ holds no samples"
    for path in files:
        # WHEN each is parsed
        event = json.loads(path.read_text(encoding="utf-8"))
        # THEN it is a JSON object
        assert isinstance(event, dict), path.name


def test_api_events_are_http_api_v2_and_the_webhook_body_is_the_platform_sample() -> None:
    # GIVEN the API events
    for path in sorted(EVENTS.glob("api_*.json")):
        event = json.loads(path.read_text(encoding="utf-8"))
        # WHEN we read their envelope
        # THEN they are HTTP API payload 2.0 events
        assert event["version"] == "2.0", path.name
        assert event["requestContext"]["http"]["path"] == event["rawPath"], path.name
    # AND the webhook's body is the platform's sample request
    webhook = json.loads((EVENTS / "api_webhook.json").read_text(encoding="utf-8"))
    body = json.loads(webhook["body"])
    assert webhook["requestContext"]["http"]["method"] == "POST"
    assert body["task_id"] == "dGFzazoxODU4MzU="
    assert set(body["scan_urls"]) == set(body["scans"])


def test_results_rule_fires_on_success_and_failure_of_our_queue_only(resources: dict[str, Any]) -> None:
    # GIVEN the results function's EventBridge rule
    events = resources["ResultsFunction"]["Properties"]["Events"]
    rules = [e["Properties"]["Pattern"] for e in events.values() if e["Type"] == "EventBridgeRule"]
    assert len(rules) == 1
    pattern = rules[0]
    # WHEN we read its pattern
    # THEN it matches Batch job state changes that end in SUCCEEDED or FAILED, on the GPU queue
    assert pattern["source"] == ["aws.batch"]
    assert pattern["detail-type"] == ["Batch Job State Change"]
    assert sorted(pattern["detail"]["status"]) == ["FAILED", "SUCCEEDED"]
    assert "GpuJobQueue" in json.dumps(pattern["detail"]["jobQueue"])


def test_results_events_match_the_rule(resources: dict[str, Any]) -> None:
    # GIVEN the results rule and the sample Batch events
    events = resources["ResultsFunction"]["Properties"]["Events"]
    pattern = next(e["Properties"]["Pattern"] for e in events.values() if e["Type"] == "EventBridgeRule")
    for name, status in (("results_succeeded.json", "SUCCEEDED"), ("results_failed.json", "FAILED")):
        event = json.loads((EVENTS / name).read_text(encoding="utf-8"))
        # WHEN we compare each with the rule
        # THEN it is an event the rule delivers, and it carries the task id as its only parameter
        assert event["source"] in pattern["source"]
        assert event["detail-type"] in pattern["detail-type"]
        assert event["detail"]["status"] == status
        assert event["detail"]["parameters"] == {"task_id": "dGFzazoxODU4MzU="}


def test_tables_keep_literal_schemas_for_local_provisioning(resources: dict[str, Any]) -> None:
    # GIVEN the tables that local mode recreates under moto from this template
    for logical in ("TasksTable", "ModelsTable"):
        props = resources[logical]["Properties"]
        # WHEN we read the parts that provisioning copies
        copied = {k: props.get(k) for k in ("KeySchema", "AttributeDefinitions",
                                            "GlobalSecondaryIndexes", "BillingMode")}
        # THEN they hold no intrinsic function
        text = json.dumps(copied)
        assert "Ref" not in text and "Fn::" not in text, logical
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["SSESpecification"]["SSEType"] == "KMS"
