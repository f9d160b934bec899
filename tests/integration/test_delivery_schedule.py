"""Delivery like a good webhook sender, against a loopback platform that is down, slow or flaky."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryDeadLetterQueue,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.adapters.platform_http import HttpPlatformClient
from scanbridge.client.files import LoopbackServer
from scanbridge.domain.results import JsonBody
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import posted_key
from scanbridge.domain.task import ScanState, Task
from scanbridge.ports import PlatformResponse
from scanbridge.services.delivery import DeliveryService, delivery_id_for
from scanbridge.services.reaper import Reaper


class Platform(LoopbackServer):
    """A loopback results endpoint: `script` says, per POST, (seconds to wait, status); then 200.

    While `hold` is set up and not yet released, every POST waits for it before answering.
    """

    def __init__(self, script: list[tuple[float, int]] | None = None, port: int = 0,
                 hold: threading.Event | None = None) -> None:
        super().__init__(port=port)
        self.script = list(script or [])
        self.hold = hold
        self.posts: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return self.base_url

    def handle_post(self, request: BaseHTTPRequestHandler) -> None:
        body = json.loads(request.rfile.read(int(request.headers.get("Content-Length") or 0)))
        wait, status = self.script.pop(0) if self.script else (0.0, 200)
        self.posts.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body,
                           "status": status})
        time.sleep(wait)
        if self.hold is not None:
            self.hold.wait(timeout=30)
        self.reply(request, status, b"{}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    """A clock tests move by hand (the schedule's times are epoch seconds on the task record)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _running_task(tasks: MemoryTaskStore, secrets: FernetSecretBox, task_id: str = "t-deliver") -> Task:
    task = Task(task_id=task_id, company_id="c1", model="tissue", status=TaskStatus.RUNNING,
                token_ciphertext=secrets.encrypt("jwt.a.b", {"task_id": task_id}),
                scans={"s1": ScanState(scan_id="s1", urls=["https://x/s1"], status=ScanStatus.FAILED,
                                       error_code="SCAN_CORRUPT", error_message="bad")})
    tasks.create(task)
    return task


def _service(tasks: MemoryTaskStore, artifacts: MemoryArtifactStore, secrets: FernetSecretBox, url: str,
             **kw: Any) -> DeliveryService:
    options: dict[str, Any] = {"attempts": 3, "backoff_s": 0.01, "timeout_s": 2.0, "retry_window_s": 3600.0,
                               "max_backoff_s": 0.05, **kw}
    return DeliveryService(tasks, artifacts, secrets, HttpPlatformClient(url, 2.0), **options)


@pytest.fixture
def stores() -> tuple[MemoryTaskStore, MemoryArtifactStore, FernetSecretBox]:
    return MemoryTaskStore(), MemoryArtifactStore(), FernetSecretBox()


def _wait_for(tasks: MemoryTaskStore, task_id: str, status: TaskStatus, timeout: float = 10.0) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = tasks.get(task_id)
        if task is not None and task.status == status:
            return task
        time.sleep(0.02)
    last = tasks.get(task_id)
    raise AssertionError(f"task is {last.status if last else None}, not {status}")


def test_a_flaky_platform_gets_one_delivery_id_on_every_retry(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a platform that answers 503, then 502, then 200
    with Platform(script=[(0.0, 503), (0.0, 502)]) as platform:
        _running_task(tasks, secrets)
        delivery = _service(tasks, artifacts, secrets, platform.url)
        # WHEN the job ends
        task = delivery.on_job_finished("t-deliver", True)
    # THEN three POSTs, all with the same Idempotency-Key / webhook-id (the task's stable delivery id)
    ids = {(p["headers"]["idempotency-key"], p["headers"]["webhook-id"]) for p in platform.posts}
    assert len(platform.posts) == 3 and ids == {(delivery_id_for("t-deliver"),) * 2}
    assert all(p["headers"]["authorization"] == "Bearer jwt.a.b" for p in platform.posts)
    assert all(p["body"] == platform.posts[0]["body"] for p in platform.posts)
    # AND the task ended (FAILED: its only scan failed) with the delivery recorded as a success
    assert task.status == TaskStatus.FAILED and task.error_code == "SCAN_CORRUPT"
    assert task.delivery.status_code == 200 and task.delivery.attempts == 3 and task.delivery.last_error is None
    assert task.delivery.delivery_id == delivery_id_for("t-deliver") and task.delivery.next_attempt_at is None


def test_a_platform_down_for_a_while_gets_the_results_after_a_restart(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a platform that is down (nothing listens on its port) when the job ends
    port = free_port()
    _running_task(tasks, secrets)
    clock = Clock()
    first = _service(tasks, artifacts, secrets, f"http://127.0.0.1:{port}", clock=clock, max_backoff_s=120.0)
    # WHEN the results step runs its burst of tries
    task = first.on_job_finished("t-deliver", True)
    # THEN the task waits, DELIVERING, for a next try stored on its record (inside the 1-hour window)
    assert task.status == TaskStatus.DELIVERING and task.delivery.attempts == 3
    assert task.delivery.next_attempt_at is not None and task.delivery.next_attempt_at > clock.now
    assert "unreachable" in (task.delivery.last_error or "")
    # AND nothing is due yet for another process (a restarted bridge: a new service over the same store)
    restarted = _service(tasks, artifacts, secrets, f"http://127.0.0.1:{port}", clock=clock, max_backoff_s=120.0)
    assert restarted.deliver_due(wait=True) == []
    # WHEN the platform is back and the next try's time has come
    with Platform(port=port) as platform:
        clock.now = task.delivery.next_attempt_at + 0.1
        due = restarted.deliver_due(wait=True)
    # THEN exactly one POST, with the same delivery id, and the task ends with its delivery recorded
    done = tasks.get("t-deliver")
    assert due == ["t-deliver"] and len(platform.posts) == 1
    assert platform.posts[0]["headers"]["webhook-id"] == delivery_id_for("t-deliver")
    assert done is not None and done.status == TaskStatus.FAILED and done.delivery.attempts == 4
    assert done.delivery.status_code == 200 and artifacts.get(posted_key("t-deliver")) is not None
    # AND a later pass posts nothing more
    assert restarted.deliver_due(wait=True) == [] and len(platform.posts) == 1


def test_the_retry_window_ends_in_delivery_failed_and_a_dead_letter(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a platform that keeps answering 503 and a 60 s retry window
    with Platform(script=[(0.0, 503)] * 20) as platform:
        _running_task(tasks, secrets)
        clock = Clock()
        letters = MemoryDeadLetterQueue()
        delivery = _service(tasks, artifacts, secrets, platform.url, clock=clock, retry_window_s=60.0,
                            max_backoff_s=30.0, backoff_s=10.0, dead_letters=letters, sleep=lambda _s: None)
        delivery.on_job_finished("t-deliver", True)
        waiting = tasks.get("t-deliver")
        assert waiting is not None and waiting.status == TaskStatus.DELIVERING and letters.messages == []
        # WHEN the clock passes the window's end and the due try runs
        tries = len(platform.posts)
        clock.now += 70.0
        delivery.deliver_due(wait=True)
    # THEN one more POST, then DELIVERY_FAILED (no more schedule)
    task = tasks.get("t-deliver")
    assert task is not None and len(platform.posts) == tries + 1
    assert task.status == TaskStatus.DELIVERY_FAILED and task.error_code == "DELIVERY_FAILED"
    assert task.delivery.next_attempt_at is None
    assert [m["task_id"] for m in letters.messages] == ["t-deliver"] and "jwt.a.b" not in json.dumps(letters.messages)


def test_a_slow_platform_is_not_a_failure_and_sees_duplicates_with_one_id(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a platform that answers its first POST only after 1.5 s (the bridge's first timeout: 1 s)
    with Platform(script=[(1.5, 200)]) as platform:
        _running_task(tasks, secrets)
        delivery = _service(tasks, artifacts, secrets, platform.url, timeout_s=1.0, max_timeout_s=8.0)
        # WHEN delivered
        task = delivery.on_job_finished("t-deliver", True)
    # THEN the second try waited longer (2 s) and got the 2xx: a success, not a failure
    assert task.delivery.status_code == 200 and task.delivery.attempts == 2 and task.delivery.last_error is None
    assert task.status == TaskStatus.FAILED and task.error_code == "SCAN_CORRUPT"  # the scan's own failure
    # AND the platform's duplicate carries the same id as the first, so it can drop it
    assert len(platform.posts) == 2
    assert platform.posts[0]["headers"]["idempotency-key"] == platform.posts[1]["headers"]["idempotency-key"]


def test_deliveries_run_in_the_background_without_holding_the_caller(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a platform that does not answer until the test lets it
    answer = threading.Event()
    with Platform(hold=answer) as platform:
        _running_task(tasks, secrets)
        delivery = _service(tasks, artifacts, secrets, platform.url, timeout_s=20.0)
        # WHEN the launcher reports the job's end (from its worker slot)
        claimed = delivery.on_job_finished_later("t-deliver", True)
        # THEN the call has returned while the platform still holds the POST unanswered: the slot is free
        # without waiting for the platform (a blocking delivery would not be back before `answer` is set)
        assert not answer.is_set()
        assert claimed.status == TaskStatus.DELIVERING
        stored = tasks.get("t-deliver")
        assert stored is not None and stored.status == TaskStatus.DELIVERING
        assert stored.delivery.status_code is None and stored.delivery.last_error is None  # no attempt ended
        answer.set()
        # AND the results arrive in the background
        done = _wait_for(tasks, "t-deliver", TaskStatus.FAILED)
        delivery.close()
    assert done.delivery.status_code == 200 and len(platform.posts) == 1


def test_a_successful_redelivery_ends_completed(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a task with one analysed scan whose delivery failed (503 on every try, no retry window)
    with Platform(script=[(0.0, 503)] * 3) as platform:
        task = _running_task(tasks, secrets)
        tasks.replace(task.model_copy(update={"scans": {"s1": task.scans["s1"].model_copy(update={
            "status": ScanStatus.SUCCEEDED, "error_code": None, "error_message": None})}}), expected_version=0)
        delivery = _service(tasks, artifacts, secrets, platform.url, retry_window_s=0.0)
        failed = delivery.on_job_finished("t-deliver", True)
        assert failed.status == TaskStatus.DELIVERY_FAILED and failed.error_code == "DELIVERY_FAILED"
        # WHEN redelivered with the platform back
        again = delivery.redeliver("t-deliver")
    # THEN COMPLETED, the old delivery error cleared, and the same delivery id as before
    assert again.status == TaskStatus.COMPLETED and again.error_code is None
    assert len({p["headers"]["webhook-id"] for p in platform.posts}) == 1 and len(platform.posts) == 4


class _DiesMidPost:
    """A platform client whose process dies in the middle of the POST (the fault injected)."""

    def post_results(self, task_id: str, body: JsonBody, bearer: str, **_kw: Any) -> PlatformResponse:
        raise SystemExit("killed mid-POST")


def test_delivering_without_progress_is_retried_by_the_reaper(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    _running_task(tasks, secrets)
    clock = Clock()
    # GIVEN a results step that died after claiming DELIVERING and starting its try
    dying = DeliveryService(tasks, artifacts, secrets, _DiesMidPost(), timeout_s=2.0, retry_window_s=3600.0,
                            clock=clock)
    with pytest.raises(SystemExit):
        dying.on_job_finished("t-deliver", True)
    stuck = tasks.get("t-deliver")
    assert stuck is not None and stuck.status == TaskStatus.DELIVERING and stuck.delivery.attempts == 1
    # AND a retried event does nothing while the try's lease runs
    with Platform() as platform:
        delivery = _service(tasks, artifacts, secrets, platform.url, clock=clock)
        assert delivery.on_job_finished("t-deliver", True).status == TaskStatus.DELIVERING
        reaper = Reaper(tasks, delivery, stale_after_s=60, launcher=MemoryJobLauncher(), clock=clock)
        reaper.reap()
        time.sleep(0.2)
        assert platform.posts == []
        # WHEN the lease is over and the reaper passes
        clock.now += 2.0 + 31.0
        reaper.reap()
        done = _wait_for(tasks, "t-deliver", TaskStatus.FAILED)
        delivery.close()
    # THEN the results were posted once, as the second try
    assert len(platform.posts) == 1 and done.delivery.attempts == 2 and done.delivery.status_code == 200


def test_a_restart_tries_every_delivering_task_at_once(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    _running_task(tasks, secrets)
    # GIVEN a results step that died mid-POST (its lease runs for another 30 s and more)
    dying = DeliveryService(tasks, artifacts, secrets, _DiesMidPost(), timeout_s=2.0, retry_window_s=3600.0)
    with pytest.raises(SystemExit):
        dying.on_job_finished("t-deliver", True)
    with Platform() as platform:
        restarted = _service(tasks, artifacts, secrets, platform.url)
        # WHEN the local stack starts again: an ordinary pass leaves the lease alone, a restart pass does not
        assert restarted.deliver_due(wait=True) == []
        due = restarted.deliver_due(wait=True, after_restart=True)
    # THEN the results were posted once, right away
    done = tasks.get("t-deliver")
    assert due == ["t-deliver"] and len(platform.posts) == 1
    assert done is not None and done.status == TaskStatus.FAILED and done.delivery.status_code == 200


def test_redeliver_tries_a_scheduled_delivery_now(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN a task waiting (DELIVERING) for a try scheduled minutes ahead: its platform was down
    _running_task(tasks, secrets)
    port = free_port()
    delivery = _service(tasks, artifacts, secrets, f"http://127.0.0.1:{port}", attempts=1, backoff_s=200.0,
                        max_backoff_s=300.0)
    waiting = delivery.on_job_finished("t-deliver", True)
    assert waiting.status == TaskStatus.DELIVERING and (waiting.delivery.next_attempt_at or 0) > time.time() + 60
    # WHEN an operator redelivers it with the platform back
    with Platform(port=port) as platform:
        done = delivery.redeliver("t-deliver")
    # THEN it is tried at once and ends, with one POST
    assert done.status == TaskStatus.FAILED and done.delivery.status_code == 200 and len(platform.posts) == 1


def test_background_bursts_wait_on_timers_not_on_the_delivery_threads(stores: Any) -> None:
    tasks, artifacts, secrets = stores
    # GIVEN one delivery thread, a platform that answers 503 to the first task's first try, and two tasks
    with Platform(script=[(0.0, 503)]) as platform:
        for tid in ("t-a", "t-b"):
            _running_task(tasks, secrets, tid)
        delivery = _service(tasks, artifacts, secrets, platform.url, backoff_s=2.0, max_backoff_s=5.0,
                            background_workers=1)
        # WHEN both jobs end, the first one first
        delivery.on_job_finished_later("t-a", True)
        time.sleep(0.3)
        delivery.on_job_finished_later("t-b", True)
        # THEN the second is delivered while the first waits out its burst's pause (about 1-3 s)
        second = _wait_for(tasks, "t-b", TaskStatus.FAILED, timeout=1.0)
        assert tasks.get("t-a").status == TaskStatus.DELIVERING  # type: ignore[union-attr]
        # AND the first is delivered after its pause, by its own burst
        first = _wait_for(tasks, "t-a", TaskStatus.FAILED, timeout=10.0)
        delivery.close()
    assert second.delivery.attempts == 1 and first.delivery.attempts == 2 and len(platform.posts) == 3
