"""The package as deployed: the layer built by its own Makefile, Lambdas in fresh interpreters, moto over HTTP.

- `built_layer`: `make -f layers/scanbridge/Makefile build-ScanbridgeLayer` into a cache folder keyed by
  the hash of what goes into it (pyproject, Makefile, generator, src/), once per machine and source state.
- `LambdaProcess`: functions/<name>/app.py in `python3.12 -S -I` whose sys.path is the function's folder,
  the layer and the runtime's boto3 (tests/deploy/lambda_runner.py), nothing else.
- `Deployment`: a moto server on loopback provisioned from template.yaml (tables, bucket, key, queue,
  Batch queue and job definition), and each function's / the job's environment as template.yaml gives it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata as md
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from scanbridge.adapters.aws.provision import provision
from scanbridge.config import Settings
from scanbridge.devtools.local_platform import FakePlatform
from tests.conftest import REPO

TEMPLATE = REPO / "template.yaml"
MAKEFILE = REPO / "layers" / "scanbridge" / "Makefile"
RUNNER = Path(__file__).with_name("lambda_runner.py")
#: what the AWS Lambda Python runtime puts on sys.path besides the layer (boto3 and its dependencies)
RUNTIME_DISTRIBUTIONS = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
#: the tenant key the API events carry (`Authorization: Bearer events-sample-key`) and its company
EVENTS_API_KEY = "events-sample-key"
EVENTS_COMPANY = "2380941"
PLATFORM_API_KEY = "platform-sample-key"
ADMIN_TOKEN = "admin-token-for-the-replay"
WEBHOOK_SECRET = "whsec_" + "c2NhbmJyaWRnZS1yZXBsYXktc2VjcmV0LTMyYnl0ZXM="
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
REGION = "us-east-1"


# ---------------------------------------------------------------- the layer


def lambda_python() -> tuple[str, str]:
    """An interpreter of the Lambda runtime's version (3.12) and that version; else this one and its own."""
    candidates = [os.environ.get("SCANBRIDGE_LAMBDA_PYTHON", ""), shutil.which("python3.12") or "",
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
                  *sorted(glob.glob(os.path.expanduser("~/.local/share/uv/python/cpython-3.12*/bin/python3.12")))]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-S", "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 check=False, capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "3.12":
            return exe, "3.12"
    return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"


def _source_hash(runtime: tuple[str, str]) -> str:
    digest = hashlib.sha256("\0".join(runtime).encode())
    files = [REPO / "pyproject.toml", REPO / "README.md", MAKEFILE, REPO / "scripts" / "layer_requirements.py",
             *sorted(p for p in (REPO / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                     and ".egg-info" not in str(p))]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_layer(runtime: tuple[str, str], out_root: Path) -> Path:
    """The layer built by its Makefile for `runtime` (interpreter, version), its bytecode compiled by that
    interpreter (cached under out_root by source hash); its python/.

    One build at a time per source state (a lock file beside it): the xdist workers that need the layer
    together wait for the first one's build instead of each running pip.
    """
    target = out_root / f"py{runtime[1]}-{_source_hash(runtime)}"
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_layer(runtime, out_root, target)


def _build_layer(runtime: tuple[str, str], out_root: Path, target: Path) -> Path:
    if (target / "built.ok").exists():
        return target / "python"
    work = Path(tempfile.mkdtemp(prefix="layer-", dir=out_root))
    proc = subprocess.run(["make", "-f", str(MAKEFILE), "build-ScanbridgeLayer", f"ARTIFACTS_DIR={work}",
                           f"PY_VERSION={runtime[1]}", f"RUNTIME_PYTHON={runtime[0]}", f"PYTHON={sys.executable}"],
                          check=False, capture_output=True, text=True, timeout=900,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"the layer Makefile failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (work / "built.ok").write_text(datetime.now(UTC).isoformat())
    try:
        work.rename(target)
    except OSError:  # another session built the same layer meanwhile
        shutil.rmtree(work, ignore_errors=True)
    return target / "python"


def layer_root() -> Path:
    """Where built layers are cached (one folder per source state), made if missing."""
    root = Path(tempfile.gettempdir()) / "scanbridge-layer-cache"
    root.mkdir(exist_ok=True)
    return root


def prefetch_layer() -> threading.Thread | None:
    """Start building the layer in a background thread of this (the controlling) process, so that the deploy
    tests find it built instead of their workers waiting on the build's lock. Nothing when SCANBRIDGE_LAYER_DIR
    names one. A failure is left to the `built_layer` fixture, which builds again and reports it."""
    if os.environ.get("SCANBRIDGE_LAYER_DIR"):
        return None

    def build() -> None:
        with contextlib.suppress(Exception, pytest.fail.Exception):
            build_layer(lambda_python(), layer_root())

    thread = threading.Thread(target=build, name="layer-prefetch", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="session")
def lambda_runtime() -> tuple[str, str]:
    """(interpreter, version) the Lambdas are replayed with."""
    return lambda_python()


@pytest.fixture(scope="session")
def built_layer(lambda_runtime: tuple[str, str]) -> Path:
    """The layer's python/ folder, as `sam build` makes it (SCANBRIDGE_LAYER_DIR: one `sam build` made)."""
    given = os.environ.get("SCANBRIDGE_LAYER_DIR")
    if given:  # e.g. .aws-sam/build/ScanbridgeLayer/python
        return Path(given)
    return build_layer(lambda_runtime, layer_root())


@pytest.fixture(scope="session")
def runtime_boto3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only boto3, botocore and their dependencies (links into this interpreter's site-packages)."""
    root = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_DISTRIBUTIONS:
        dist = md.distribution(name)
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__", "bin")
                and not f.parts[0].endswith((".dist-info", ".egg-info"))}
        for top in tops:
            link = root / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return root


def _requirement_closure(lines: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions `lines` need, following each one's own requirements (markers honoured)."""
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    stack = [(Requirement(line), "") for line in lines]
    while stack:
        req, extra = stack.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = req.name.lower().replace("_", "-")
        if key == "scanbridge":
            continue
        new_extras = set(req.extras)
        if key not in found:
            found[key] = md.distribution(req.name)
        elif not new_extras:
            continue
        for dep in found[key].requires or []:
            for wanted in ["", *sorted(new_extras)]:
                stack.append((Requirement(dep), wanted))
    return found


def link_site(dists: dict[str, md.Distribution], root: Path) -> Path:
    """A folder holding only `dists` (links into this interpreter's site-packages), metadata included."""
    root.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__", "bin")}:
            link = root / top
            if not link.exists() and not link.is_symlink():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return root


@pytest.fixture(scope="session")
def worker_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `pip install ".[worker]"` puts in the worker image, and nothing else (base + [worker], resolved)."""
    gen = _load_generator()
    return link_site(_requirement_closure(gen.extra_requirements("worker")), tmp_path_factory.mktemp("worker-site"))


def _load_generator() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("layer_requirements", REPO / "scripts" / "layer_requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- one Lambda container


class LambdaProcess:
    """One warm Lambda container of a function: import once, then one event at a time."""

    def __init__(self, python: str, function_dir: Path, paths: list[Path], env: dict[str, str], cwd: Path) -> None:
        self.name = function_dir.name
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        self._proc = subprocess.Popen([python, "-S", "-I", str(RUNNER), str(function_dir), *map(str, paths)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, cwd=cwd, text=True)
        first = self._read(120)
        if not first["ok"]:
            raise AssertionError(f"{self.name}: the handler does not import: {first['error']}\n"
                                 f"{first.get('traceback', '')}\n{self.stderr()}")
        self.modules: set[str] = set(first["modules"])
        self.compiled: list[str] = list(first["compiled"])  # files the import compiled from source

    def stderr(self) -> str:
        """What the function logged so far (its last 6000 characters)."""
        self._stderr.seek(0)
        return self._stderr.read()[-6000:]

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"{self.name}: no answer (exit {self._proc.poll()}):\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def invoke(self, event: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        """The handler's return value for `event`; an invocation error fails the test with its traceback."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(event) + "\n")
        self._proc.stdin.flush()
        answer = self._read(timeout_s)
        if not answer["ok"]:
            raise AssertionError(f"{self.name}: the invocation failed: {answer['error']}\n"
                                 f"{answer.get('traceback', '')}\n{self.stderr()}")
        response: dict[str, Any] = answer["response"]
        return response

    def close(self) -> None:
        """End the container."""
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


# ---------------------------------------------------------------- template.yaml with its intrinsics


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps `!Ref X` as {"Ref": X} and `!GetAtt A.B` as {"Fn::GetAtt": "A.B"}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template() -> dict[str, Any]:
    """template.yaml with its intrinsic functions as CloudFormation's JSON form."""
    data: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return data


def resolve(value: Any, refs: dict[str, str]) -> str:
    """A template value with Ref / GetAtt resolved from `refs` (a KeyError names what the replay lacks)."""
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return refs[att if isinstance(att, str) else ".".join(att)]
    if isinstance(value, (dict, list)):
        raise TypeError(f"the replay cannot resolve {value!r}")
    return str(value)


def function_folders(template: dict[str, Any]) -> dict[str, str]:
    """functions/<folder> -> logical id of the AWS::Serverless::Function built from it."""
    out = {}
    for logical, res in template["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            out[Path(res["Properties"]["CodeUri"]).name] = logical
    return out


def function_for_event(name: str) -> str:
    """The function folder an events/ file is for: api_*, webhook_*, results_* (its prefix)."""
    return name.split("_", 1)[0]


# ---------------------------------------------------------------- the deployment under moto


@dataclass
class Deployment:
    """template.yaml's resources in a moto server, the environments it gives, and a loopback platform."""

    endpoint: str
    platform: FakePlatform
    python: str
    layer: Path
    runtime: Path
    work: Path
    template: dict[str, Any] = field(default_factory=load_template)
    refs: dict[str, str] = field(default_factory=dict)
    _open: list[LambdaProcess] = field(default_factory=list)
    _warm: dict[str, LambdaProcess] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        """A boto3 client of the moto server."""
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        return session.client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]

    def _moto_api(self, path: str, body: dict[str, Any] | None = None) -> None:
        req = urllib.request.Request(self.endpoint + path, data=json.dumps(body or {}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:  # the loopback moto server
            resp.read()

    def fresh(self) -> None:
        """A new, empty account: moto reset, every Lambda container ended, the template's resources created."""
        self.close_functions()
        self.platform.posts.clear()  # the platform hears each scenario afresh
        self._moto_api("/moto-api/reset")
        self._moto_api("/moto-api/config", {"batch": {"use_docker": False}})
        resources = self.template["Resources"]
        kms = self.client("kms")
        key = kms.create_key(Description="scanbridge replay")["KeyMetadata"]["KeyId"]
        suffix = uuid.uuid4().hex[:8]
        refs = {"AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::StackName": "replay",
                "TasksTable": f"replay-TasksTable-{suffix}", "ModelsTable": f"replay-ModelsTable-{suffix}",
                "ArtifactsBucket": f"replay-artifactsbucket-{suffix}", "TaskKey": key,
                "PlatformUrl": self.platform.base_url, "AllowedScanHosts": self.platform.netloc,
                "WebhookSecret": WEBHOOK_SECRET, "AdminToken": ADMIN_TOKEN,
                "ApiKeys": f"{EVENTS_API_KEY}:{EVENTS_COMPANY}", "PlatformApiKey": PLATFORM_API_KEY}
        settings = Settings(table_name=refs["TasksTable"], models_table_name=refs["ModelsTable"],
                            bucket_name=refs["ArtifactsBucket"], kms_key_id=key, aws_region=REGION)
        provision(settings, self.client("dynamodb"), self.client("s3"), kms)
        refs["ResultsDeadLetterQueue"] = self.client("sqs").create_queue(QueueName=f"replay-dlq-{suffix}")["QueueUrl"]
        iam = self.client("iam")
        role = iam.create_role(RoleName=f"batch-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        batch = self.client("batch")
        ce = batch.create_compute_environment(computeEnvironmentName=f"gpu-{suffix}", type="UNMANAGED",
                                              state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
        queue_props = resources["GpuJobQueue"]["Properties"]
        refs["GpuJobQueue"] = batch.create_job_queue(
            jobQueueName=f"gpu-{suffix}", state="ENABLED", priority=int(queue_props["Priority"]),
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])["jobQueueArn"]
        self.refs = refs
        job = resources["WorkerJobDefinition"]["Properties"]
        container = job["ContainerProperties"]
        refs["WorkerJobDefinition"] = batch.register_job_definition(
            jobDefinitionName=f"worker-{suffix}", type="container", parameters=job["Parameters"],
            containerProperties={"image": "scanbridge-worker", "command": container["Command"],
                                 "environment": [{"name": k, "value": v} for k, v in self.job_env().items()],
                                 "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                          {"type": "MEMORY", "value": "512"}]},
        )["jobDefinitionArn"]

    def function_env(self, logical: str) -> dict[str, str]:
        """The environment template.yaml gives a function (Globals + its own), resolved."""
        variables = dict(self.template["Globals"]["Function"]["Environment"]["Variables"])
        own = self.template["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})
        variables.update(own)
        return {k: resolve(v, self.refs) for k, v in variables.items()}

    def job_env(self) -> dict[str, str]:
        """The environment the job definition gives the worker container, resolved."""
        container = self.template["Resources"]["WorkerJobDefinition"]["Properties"]["ContainerProperties"]
        return {e["Name"]: resolve(e["Value"], self.refs) for e in container.get("Environment", [])}

    def job_command(self, task_id: str) -> list[str]:
        """The job definition's Command with the task_id parameter substituted, as Batch does."""
        container = self.template["Resources"]["WorkerJobDefinition"]["Properties"]["ContainerProperties"]
        return [task_id if part == "Ref::task_id" else str(part) for part in container["Command"]]

    def aws_env(self) -> dict[str, str]:
        """What a Lambda / Batch container gets from AWS itself, with the SDK pointed at moto."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work), "LANG": "C.UTF-8",
                "TZ": "UTC", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **CREDENTIALS,
                "SCANBRIDGE_AWS_ENDPOINT_URL": self.endpoint}

    def function(self, folder: str) -> LambdaProcess:
        """The warm container of functions/<folder> (started on first use, like a cold start)."""
        if folder not in self._warm:
            logical = function_folders(self.template)[folder]
            fn_dir = REPO / "functions" / folder
            env = {**self.aws_env(), **self.function_env(logical), "AWS_LAMBDA_FUNCTION_NAME": logical,
                   "LAMBDA_TASK_ROOT": str(fn_dir), "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12"}
            cwd = self.work / f"lambda-{folder}"
            cwd.mkdir(exist_ok=True)
            proc = LambdaProcess(self.python, fn_dir, [self.layer, self.runtime], env, cwd)
            self._warm[folder] = proc
        return self._warm[folder]

    def replay(self, event_file: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Invoke the function an events/ file is for with it (webhooks signed as the platform signs them)."""
        from tests.conftest import EVENTS

        event = event if event is not None else json.loads((EVENTS / event_file).read_text())
        if event.get("rawPath") == "/webhook":
            event = sign_webhook(event, WEBHOOK_SECRET)
        return self.function(function_for_event(event_file)).invoke(event)

    def close_functions(self) -> None:
        """End every Lambda container (the next event is a cold start)."""
        for proc in self._warm.values():
            proc.close()
        self._warm.clear()


def sign_webhook(event: dict[str, Any], secret: str) -> dict[str, Any]:
    """The event with Standard Webhooks headers over its body, signed now."""
    from standardwebhooks.webhooks import Webhook

    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, event.get("body") or "")
    headers = {**event.get("headers", {}), "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature}
    return {**event, "headers": headers}


@pytest.fixture(scope="module")
def deployment(lambda_runtime: tuple[str, str], built_layer: Path, runtime_boto3: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A moto server on loopback with template.yaml's resources, a loopback platform serving a real slide."""
    from moto.server import ThreadedMotoServer

    from tests.conftest import FIXTURES

    slide = FIXTURES / "thirdparty" / "vips_pyramid_jpeg.tif"
    if not slide.exists():
        pytest.skip(f"fixture {slide} not found")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    platform = FakePlatform(files={"slide": slide}).start()
    dep = Deployment(endpoint=f"http://{host}:{port}", platform=platform, python=lambda_runtime[0],
                     layer=built_layer, runtime=runtime_boto3, work=tmp_path_factory.mktemp("deployment"))
    try:
        yield dep
    finally:
        dep.close_functions()
        platform.stop()
        server.stop()
