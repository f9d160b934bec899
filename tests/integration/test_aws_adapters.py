"""The AWS adapters under moto, and the same contract run against the in-memory adapters."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scanbridge.adapters.aws.batch import BatchJobLauncher, job_name
from scanbridge.adapters.aws.dynamodb import DynamoTaskStore
from scanbridge.adapters.aws.kms import KmsSecretBox
from scanbridge.adapters.aws.provision import load_template, provision
from scanbridge.adapters.aws.s3 import S3ArtifactStore
from scanbridge.adapters.local.folder import FolderArtifactStore
from scanbridge.adapters.local.memory import FernetSecretBox, MemoryArtifactStore, MemoryTaskStore
from scanbridge.config import Settings
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import ScanState, Task


@pytest.fixture
def moto_clients(aws: None) -> dict[str, Any]:
    """Clients on moto with the template's resources provisioned."""
    settings = Settings()
    clients = {n: boto3.client(n, region_name="us-east-1") for n in ("dynamodb", "s3", "kms")}
    provision(settings, clients["dynamodb"], clients["s3"], clients["kms"])
    return clients


@pytest.fixture(params=["memory", "dynamodb"])
def task_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryTaskStore()
        return
    clients = request.getfixturevalue("moto_clients")
    yield DynamoTaskStore(clients["dynamodb"], Settings().table_name)


@pytest.fixture(params=["memory", "folder", "s3"])
def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryArtifactStore()
    if request.param == "folder":  # `scanbridge run-scan`'s artifacts
        return FolderArtifactStore(tmp_path / "out", "tasks/")
    return S3ArtifactStore(request.getfixturevalue("moto_clients")["s3"], Settings().bucket_name)


@pytest.fixture(params=["memory", "kms"])
def secret_box(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return FernetSecretBox()
    return KmsSecretBox(request.getfixturevalue("moto_clients")["kms"], Settings().kms_key_id)


def _task(task_id: str, company: str = "c1", created: str = "2026-01-01T00:00:00.000Z") -> Task:
    return Task(task_id=task_id, company_id=company, created_at=created,
                scans={"s": ScanState(scan_id="s", urls=["https://x/y"])})


def test_tables_are_built_from_template_yaml(moto_clients: dict[str, Any]) -> None:
    # GIVEN the template's table definition / WHEN provisioned under moto / THEN the same keys and indexes exist
    props = load_template()["Resources"]["TasksTable"]["Properties"]
    desc = moto_clients["dynamodb"].describe_table(TableName=Settings().table_name)["Table"]
    assert desc["KeySchema"] == props["KeySchema"]
    assert sorted(i["IndexName"] for i in desc["GlobalSecondaryIndexes"]) == sorted(
        g["IndexName"] for g in props["GlobalSecondaryIndexes"])


def test_task_store_contract(task_store: Any) -> None:
    # GIVEN an empty store
    task = _task("t1")
    # WHEN a task is created twice / THEN only the first create succeeds
    assert task_store.create(task) is True
    assert task_store.create(task.model_copy(update={"company_id": "evil"})) is False
    stored = task_store.get("t1")
    assert stored is not None and stored.company_id == "c1" and stored.version == 0
    # WHEN two writers replace from the same version / THEN only one wins
    assert task_store.replace(stored.model_copy(update={"status": TaskStatus.QUEUED}), expected_version=0)
    assert not task_store.replace(stored.model_copy(update={"status": TaskStatus.FAILED}), expected_version=0)
    again = task_store.get("t1")
    assert again is not None and again.status == TaskStatus.QUEUED and again.version == 1
    assert task_store.get("missing") is None


def test_task_store_lists_by_status_and_company_with_pages(task_store: Any) -> None:
    # GIVEN six tasks across two companies, two of them QUEUED
    for i in range(6):
        t = _task(f"t{i}", company="A" if i < 4 else "B", created=f"2026-01-01T00:00:0{i}.000Z")
        task_store.create(t)
        if i in (1, 5):
            task_store.replace(t.model_copy(update={"status": TaskStatus.QUEUED}), expected_version=0)
    # WHEN listed by company (paged by 3), by status, and by both
    p1 = task_store.list(company_id="A", limit=3)
    p2 = task_store.list(company_id="A", limit=3, cursor=p1.next_cursor)
    queued = task_store.list(status=TaskStatus.QUEUED)
    both = task_store.list(status=TaskStatus.QUEUED, company_id="B")
    # THEN newest first, no task lost or repeated across pages, filters exact
    assert [t.task_id for t in p1.tasks + p2.tasks] == ["t3", "t2", "t1", "t0"]
    assert sorted(t.task_id for t in queued.tasks) == ["t1", "t5"]
    assert [t.task_id for t in both.tasks] == ["t5"]


def test_artifact_store_contract(artifact_store: Any) -> None:
    # GIVEN bytes under two keys / WHEN read back and listed / THEN identical, and absent keys are None
    artifact_store.put("tasks/a/x.json", b'{"a": 1}', "application/json")
    artifact_store.put("tasks/a/y.bin", bytes(range(256)))
    assert artifact_store.get("tasks/a/y.bin") == bytes(range(256))
    assert artifact_store.list("tasks/a/") == ["tasks/a/x.json", "tasks/a/y.bin"]
    assert artifact_store.get("tasks/b/none") is None
    assert artifact_store.url("tasks/a/x.json")


def test_artifact_store_stores_the_rest_of_a_file_and_leaves_it_open(artifact_store: Any) -> None:
    # GIVEN a spooled temporary file (on disk past 1 MiB) holding a 4-byte prefix, then 8 MiB + 3 bytes
    # (past boto3's multipart threshold: S3 gets a multipart upload), read up to the end of the prefix
    payload = bytes(range(256)) * (8 * 4096) + b"end"
    with tempfile.SpooledTemporaryFile(max_size=1 << 20, mode="w+b") as fh:
        fh.write(b"skip" + payload)
        fh.seek(4)
        # WHEN it is stored from the file, beside a small one stored the same way from the start
        artifact_store.put_file("tasks/a/big.bin", fh, "application/octet-stream")
        # THEN the file is still the caller's (open), and the key holds exactly what was left to read
        assert not fh.closed
    small = io.BytesIO(b"a,b\n1,2\n")
    artifact_store.put_file("tasks/a/small.csv", small, "text/csv")
    assert artifact_store.get("tasks/a/big.bin") == payload
    assert artifact_store.get("tasks/a/small.csv") == b"a,b\n1,2\n"
    assert artifact_store.list("tasks/a/") == ["tasks/a/big.bin", "tasks/a/small.csv"]


def test_secret_box_contract(secret_box: Any) -> None:
    # GIVEN a token encrypted for one task
    ciphertext = secret_box.encrypt("eyJ.secret.jwt", {"task_id": "t1"})
    # THEN the ciphertext does not contain it, it decrypts with the same context, and not with another
    assert "eyJ.secret.jwt" not in ciphertext
    assert secret_box.decrypt(ciphertext, {"task_id": "t1"}) == "eyJ.secret.jwt"
    with pytest.raises(Exception):  # noqa: B017, PT011 - KMS and Fernet raise different types
        secret_box.decrypt(ciphertext, {"task_id": "t2"})


class CountingKms:
    """A KMS client that counts the calls it forwards to moto's."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            return getattr(self._client, name)(**kwargs)
        return call


def test_kms_box_seals_locally_under_one_data_key_that_any_process_can_open(moto_clients: dict[str, Any]) -> None:
    # GIVEN the KMS box of the API process and the one of another process (the results Lambda)
    kms = moto_clients["kms"]
    api, results = CountingKms(kms), CountingKms(kms)
    sealer = KmsSecretBox(api, Settings().kms_key_id)
    opener = KmsSecretBox(results, Settings().kms_key_id)
    # WHEN the API seals 50 task tokens
    sealed = {f"t{i}": sealer.encrypt(f"eyJ.token-{i}.sig", {"task_id": f"t{i}"}) for i in range(50)}
    # THEN it asked KMS for one data key and nothing else; each ciphertext carries that key, wrapped
    assert api.calls == ["generate_data_key"]
    assert all(c.startswith("kms1.") and "token" not in c for c in sealed.values())
    assert len({c.split(".")[1] for c in sealed.values()}) == 1
    # AND the other process opens every one with one KMS Decrypt (of the data key), each only with its own task
    assert all(opener.decrypt(c, {"task_id": tid}) == f"eyJ.token-{tid[1:]}.sig" for tid, c in sealed.items())
    assert results.calls == ["decrypt"]
    with pytest.raises(ValueError, match="encryption context"):
        opener.decrypt(sealed["t1"], {"task_id": "t2"})
    wrapped, body = sealed["t1"].removeprefix("kms1.").split(".")
    tampered = f"kms1.{wrapped}.{body[:-4]}{'AAAA' if body[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(ValueError, match="does not open"):
        opener.decrypt(tampered, {"task_id": "t1"})


def test_kms_box_renews_its_data_key_by_age_and_by_use(moto_clients: dict[str, Any]) -> None:
    # GIVEN a box whose data keys last 60 s or 3 uses, on a clock the test moves
    now = [0.0]
    kms = CountingKms(moto_clients["kms"])
    box = KmsSecretBox(kms, Settings().kms_key_id, key_max_age_s=60, key_max_uses=3, clock=lambda: now[0])
    # WHEN it seals 4 tokens, then one more after 61 s
    first = [box.encrypt("eyJ.a.b", {"task_id": str(i)}) for i in range(4)]
    now[0] = 61.0
    later = box.encrypt("eyJ.a.b", {"task_id": "late"})
    # THEN a second data key came after 3 uses and a third with age; all of them still open
    assert kms.calls == ["generate_data_key"] * 3
    assert len({c.split(".")[1] for c in [*first, later]}) == 3
    assert [box.decrypt(c, {"task_id": str(i)}) for i, c in enumerate(first)] == ["eyJ.a.b"] * 4


def test_kms_box_still_opens_tokens_kms_encrypted_whole(moto_clients: dict[str, Any]) -> None:
    # GIVEN a token stored in the earlier form: encrypted by KMS itself under the task context
    import base64

    kms = moto_clients["kms"]
    blob = kms.encrypt(KeyId=Settings().kms_key_id, Plaintext=b"eyJ.old.jwt",
                       EncryptionContext={"task_id": "t1"})["CiphertextBlob"]
    old = base64.b64encode(blob).decode()
    box = KmsSecretBox(kms, Settings().kms_key_id)
    # WHEN the box decrypts it / THEN the token, and only under its own task's context
    assert box.decrypt(old, {"task_id": "t1"}) == "eyJ.old.jwt"
    with pytest.raises(Exception):  # noqa: B017, PT011 - KMS's own error for a wrong context
        box.decrypt(old, {"task_id": "t2"})


def test_batch_submit_passes_only_the_task_id() -> None:
    # GIVEN a Batch client whose SubmitJob call is inspected
    client = boto3.client("batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    expected = {"jobName": job_name("dGFzazox/ODU4MzU="), "jobQueue": "q", "jobDefinition": "d",
                "parameters": {"task_id": "dGFzazox/ODU4MzU="}}
    stub.add_response("submit_job", {"jobName": "n", "jobId": "job-123"}, expected)
    # WHEN a job is submitted / THEN exactly those arguments go out (no token, no environment override)
    with stub:
        assert BatchJobLauncher(client, "q", "d").submit("dGFzazox/ODU4MzU=") == "job-123"
    stub.assert_no_pending_responses()
    assert job_name("a/b=c") == "scanbridge-a_b_c"


def test_several_scans_become_an_array_job() -> None:
    # GIVEN a task with three scans / WHEN submitted / THEN one array job of size 3, still only the task_id
    client = boto3.client("batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response("submit_job", {"jobName": "n", "jobId": "arr-1"},
                      {"jobName": "scanbridge-t", "jobQueue": "q", "jobDefinition": "d",
                       "parameters": {"task_id": "t"}, "arrayProperties": {"size": 3}})
    with stub:
        assert BatchJobLauncher(client, "q", "d").submit("t", scans=3) == "arr-1"
    stub.assert_no_pending_responses()


def test_each_containers_clients_share_the_processs_parsed_service_models(aws: None) -> None:
    # GIVEN the AWS clients of two containers, made one after the other in one process
    from scanbridge.bootstrap import aws_clients

    first, second = aws_clients(Settings()), aws_clients(Settings())
    # THEN each container has clients of its own
    assert all(first[name] is not second[name] for name in first)
    # AND the services' JSON models were parsed once, not once per container
    for name in first:
        assert first[name].meta.service_model._service_description is \
            second[name].meta.service_model._service_description, name
