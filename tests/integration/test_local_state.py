"""The local stack's moto state survives a SIGKILL: the journal (adapters/local/journal.py) on a real moto server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import boto3
import pytest

from scanbridge.adapters.aws.dynamodb import DynamoTaskStore
from scanbridge.adapters.aws.kms import KmsSecretBox
from scanbridge.adapters.aws.provision import provision
from scanbridge.adapters.aws.s3 import S3ArtifactStore
from scanbridge.adapters.local.journal import changes_state, read_records
from scanbridge.config import Settings
from scanbridge.domain.task import Task
from scanbridge.entrypoints.local_stack import MotoProcess


def _clients(url: str) -> dict[str, object]:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="us-east-1")
    return {name: session.client(name, endpoint_url=url) for name in ("dynamodb", "s3", "kms")}


def _kill(moto: MotoProcess) -> None:
    os.kill(moto._proc.pid, signal.SIGKILL)
    moto._proc.wait()


def test_tasks_artifacts_and_key_survive_sigkill_and_two_restarts(tmp_path: Path) -> None:
    # GIVEN a moto server keeping its state in a folder, provisioned from template.yaml
    settings = Settings()
    state = tmp_path / "state"
    moto = MotoProcess(state)
    try:
        c = _clients(moto.url)
        key_id = provision(settings, c["dynamodb"], c["s3"], c["kms"])
        tasks = DynamoTaskStore(c["dynamodb"], settings.table_name)
        artifacts = S3ArtifactStore(c["s3"], settings.bucket_name)
        box = KmsSecretBox(c["kms"], key_id)
        # WHEN tasks, a versioned update, an artifact and an encrypted token are written (and a lost
        # conditional write, which changes nothing), then moto is SIGKILLed
        secret = box.encrypt("the-task-jwt", {"task_id": "t1"})
        assert tasks.create(Task(task_id="t1", token_ciphertext=secret, created_at="2026-01-01T00:00:00.000Z"))
        assert tasks.create(Task(task_id="t2", created_at="2026-01-02T00:00:00.000Z"))
        assert not tasks.create(Task(task_id="t2"))
        t1 = tasks.get("t1")
        assert t1 is not None and tasks.replace(t1.model_copy(update={"model": "nuclei"}), t1.version)
        blob = os.urandom(300_000)
        artifacts.put("tasks/t1/result.bin", blob)
        _kill(moto)
        moto = MotoProcess(state)
        c = _clients(moto.url)
        # THEN after a restart everything is there and the token still decrypts
        tasks = DynamoTaskStore(c["dynamodb"], settings.table_name)
        restored = tasks.get("t1")
        assert restored is not None and restored.model == "nuclei" and restored.version == 1
        assert KmsSecretBox(c["kms"], key_id).decrypt(restored.token_ciphertext or "", {"task_id": "t1"}) \
            == "the-task-jwt"
        assert S3ArtifactStore(c["s3"], settings.bucket_name).get("tasks/t1/result.bin") == blob
        assert [t.task_id for t in tasks.list(limit=10).tasks] == ["t2", "t1"]
        # AND provisioning again creates nothing new (same key), and a write after the restart survives
        # the next SIGKILL too (the snapshot of the restart plus the new journal)
        assert provision(settings, c["dynamodb"], c["s3"], c["kms"]) == key_id
        assert tasks.create(Task(task_id="t3"))
        _kill(moto)
        moto = MotoProcess(state)
        c = _clients(moto.url)
        tasks = DynamoTaskStore(c["dynamodb"], settings.table_name)
        assert {t.task_id for t in tasks.list(limit=10).tasks} == {"t1", "t2", "t3"}
        again = tasks.get("t1")
        assert again is not None
        assert KmsSecretBox(c["kms"], key_id).decrypt(again.token_ciphertext or "", {"task_id": "t1"}) \
            == "the-task-jwt"
        # AND only one snapshot and one journal are kept (compaction at every start)
        assert len(list(state.glob("snapshot-*.pickle"))) == 1 and len(list(state.glob("journal-*.bin"))) == 1
    finally:
        moto.stop()


def test_a_torn_last_record_is_dropped_and_reads_are_not_journalled(tmp_path: Path) -> None:
    # GIVEN a journal with one complete write, then a read, then half a record (killed mid-write)
    state = tmp_path / "state"
    moto = MotoProcess(state)
    try:
        c = _clients(moto.url)
        c["s3"].create_bucket(Bucket="bucket-a")  # type: ignore[attr-defined]
        c["s3"].list_buckets()  # type: ignore[attr-defined]
        _kill(moto)
        journal = max(state.glob("journal-*.bin"))
        records = list(read_records(journal))
        assert len(records) == 1  # the read was not journalled
        with open(journal, "ab") as fh:
            fh.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"environ\"")
        # WHEN moto starts again / THEN the complete write is back and the torn one was dropped
        moto = MotoProcess(state)
        names = [b["Name"] for b in _clients(moto.url)["s3"].list_buckets()["Buckets"]]  # type: ignore[attr-defined]
        assert names == ["bucket-a"]
    finally:
        moto.stop()


@pytest.mark.parametrize(("method", "target", "expected"), [
    ("POST", "DynamoDB_20120810.PutItem", True), ("POST", "DynamoDB_20120810.GetItem", False),
    ("POST", "DynamoDB_20120810.Query", False), ("POST", "TrentService.CreateKey", True),
    ("POST", "TrentService.GenerateDataKey", False), ("PUT", "", True), ("GET", "", False),
])
def test_which_requests_are_journalled(method: str, target: str, expected: bool) -> None:
    # GIVEN a request / WHEN classified / THEN only the ones that change state are journalled
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/", **({"HTTP_X_AMZ_TARGET": target} if target else {})}
    assert changes_state(environ) is expected


def test_moto_dies_with_its_parent(tmp_path: Path) -> None:
    # GIVEN a moto server started by a child process that is then SIGKILLed
    import subprocess
    import sys

    code = ("import time; from pathlib import Path; from scanbridge.entrypoints.local_stack import MotoProcess; "
            f"m = MotoProcess(Path({str(tmp_path / 'state')!r})); print(m._proc.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    moto_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    # WHEN a moment passes / THEN moto is gone too (PR_SET_PDEATHSIG), not orphaned
    deadline = time.monotonic() + 5
    while Path(f"/proc/{moto_pid}").exists() and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{moto_pid}/stat").read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{moto_pid}/stat").exists() and Path(f"/proc/{moto_pid}/stat").read_text().split()[2] != "Z"
    assert not alive


def test_the_journal_is_compacted_while_running_and_one_folder_has_one_server(tmp_path: Path) -> None:
    # GIVEN a moto server that snapshots each time its journal passes 20 kB
    settings = Settings()
    state = tmp_path / "state"
    moto = MotoProcess(state, compact_bytes=20_000)
    try:
        c = _clients(moto.url)
        provision(settings, c["dynamodb"], c["s3"], c["kms"])
        tasks = DynamoTaskStore(c["dynamodb"], settings.table_name)
        # WHEN 60 tasks of ~2 kB are written (several compactions), then moto is SIGKILLed
        for i in range(60):
            assert tasks.create(Task(task_id=f"c{i:02d}", extra={"pad": "x" * 2000}))
        generation = max(int(p.stem.split("-")[1]) for p in state.glob("snapshot-*.pickle"))
        assert generation > 3  # compacted while running (generation 1 is the start's)
        # AND a second server on the same folder is refused
        with pytest.raises(RuntimeError, match="in use"):
            MotoProcess(state)
        _kill(moto)
        # THEN after a restart all 60 are there
        moto = MotoProcess(state)
        tasks = DynamoTaskStore(_clients(moto.url)["dynamodb"], settings.table_name)
        assert len(tasks.list(limit=100).tasks) == 60
    finally:
        moto.stop()
