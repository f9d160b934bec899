"""The one composition root: settings -> adapters -> services.

Lambdas call `bootstrap()` once at module scope; tests pass fakes as overrides. Nothing here runs
at import time, and the API side never imports inference/ or the readers.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from scanbridge.config import Settings, get_settings
from scanbridge.ports import (
    ArtifactStore,
    ArtifactWriter,
    CheckpointStore,
    DeadLetterQueue,
    Fetcher,
    JobLauncher,
    PlatformClient,
    ScanAnalyzer,
    ScanOpener,
    ScanQc,
    SecretBox,
    TaskStore,
)
from scanbridge.services.control import ControlService
from scanbridge.services.delivery import DeliveryService
from scanbridge.services.intake import IntakeService
from scanbridge.services.models import ModelService
from scanbridge.services.queries import QueryService

if TYPE_CHECKING:
    from scanbridge.inference.runner import ModelLoader  # onnxruntime: the worker's (and /v1/infer's) only
    from scanbridge.services.artifacts import ArtifactService  # the REST API's only (the webhook Lambda's
    from scanbridge.services.exports import ExportService  # cold start does not pay for them)
    from scanbridge.services.processing import ProcessingService

log = logging.getLogger(__name__)


@dataclass
class Container:
    """Every adapter and service of one process."""

    settings: Settings
    tasks: TaskStore
    artifacts: ArtifactStore
    secrets: SecretBox
    launcher: JobLauncher
    platform: PlatformClient
    catalog: ModelService
    intake: IntakeService
    delivery: DeliveryService
    queries: QueryService
    control: ControlService
    dead_letters: DeadLetterQueue
    _loader: ModelLoader | None = field(default=None, init=False, repr=False)
    _loader_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def model_loader(self) -> ModelLoader:
        """This process's ModelLoader for `/v1/infer`, made on first use (onnxruntime is imported then;
        its models stay cached in it)."""
        with self._loader_lock:
            if self._loader is None:
                self._loader = model_loader(self.settings, self.catalog, api=True)
            return self._loader

    @cached_property
    def downloads(self) -> ArtifactService:
        """A task's artifacts for the REST API (list, one file), made on first use."""
        from scanbridge.services.artifacts import ArtifactService

        return ArtifactService(self.queries, self.artifacts)

    @cached_property
    def exports(self) -> ExportService:
        """A scan's results as a file (GeoJSON, CSV, DICOM), made on first use."""
        from scanbridge.services.exports import ExportService

        return ExportService(self.queries, self.artifacts)


#: HTTP connections each AWS client keeps: the API's thread pool (anyio's 40 threads) plus the launcher's and
#: the reaper's, so that concurrent requests reuse connections rather than open (and drop) new ones
AWS_MAX_CONNECTIONS = 64


@functools.cache
def _botocore_loader() -> Any:
    """The process's one botocore data loader: its parsed service models (JSON) are kept for every session."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def aws_clients(settings: Settings) -> dict[str, Any]:
    """boto3 clients for DynamoDB, S3, KMS, Batch and SQS (pointed at moto when an endpoint is set).

    Each call is a new boto3 session over the process's one botocore loader: a fresh session would parse the
    services' JSON models again (~0.15 s of CPU a call: the test suite's in-process stacks make ~20)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    core.register_component("data_loader", _botocore_loader())
    session = boto3.session.Session(region_name=settings.aws_region, botocore_session=core)
    kwargs: dict[str, Any] = {"endpoint_url": settings.aws_endpoint_url} if settings.aws_endpoint_url else {}
    kwargs["config"] = Config(max_pool_connections=AWS_MAX_CONNECTIONS)
    return {name: session.client(name, **kwargs) for name in ("dynamodb", "s3", "kms", "batch", "sqs")}


def bootstrap(settings: Settings | None = None, *, tasks: TaskStore | None = None,
              artifacts: ArtifactStore | None = None, secrets: SecretBox | None = None,
              launcher: JobLauncher | None = None, platform: PlatformClient | None = None,
              dead_letters: DeadLetterQueue | None = None, sleep: Callable[[float], None] = time.sleep,
              provision: bool = False) -> Container:
    """Build the container; any adapter can be replaced by passing it by name (tasks=..., launcher=...).

    AWS clients are made only when a store or the secret box is left to the settings; `provision` creates
    the tables, bucket and key there first (the local stack, over moto)."""
    settings = settings or get_settings()
    need_aws = tasks is None or artifacts is None or secrets is None
    clients = aws_clients(settings) if need_aws else {}
    if need_aws and provision:
        from scanbridge.adapters.aws.provision import provision as provision_aws

        provision_aws(settings, clients["dynamodb"], clients["s3"], clients["kms"])

    from scanbridge.adapters.aws.dynamodb import DynamoTaskStore
    from scanbridge.adapters.aws.kms import KmsSecretBox
    from scanbridge.adapters.aws.s3 import S3ArtifactStore
    from scanbridge.adapters.platform_http import HttpPlatformClient

    platform_configured = bool(settings.platform_url) or platform is not None
    tasks = tasks or DynamoTaskStore(clients["dynamodb"], settings.table_name)
    artifacts = artifacts or S3ArtifactStore(clients["s3"], settings.bucket_name)
    secrets = secrets or KmsSecretBox(clients["kms"], settings.kms_key_id)
    platform = platform or HttpPlatformClient(settings.platform_url, settings.delivery_timeout_s)
    if "dynamodb" in clients:
        from scanbridge.adapters.aws.models_registry import DynamoModelRegistry

        catalog = ModelService(DynamoModelRegistry(clients["dynamodb"], settings.models_table_name,
                                                   clients["s3"], settings.bucket_name))
    else:
        from scanbridge.adapters.local.models_registry import MemoryModelRegistry

        catalog = ModelService(MemoryModelRegistry())
    if dead_letters is None:
        if settings.dead_letter_queue_url and clients:
            from scanbridge.adapters.aws.sqs import SqsDeadLetterQueue

            dead_letters = SqsDeadLetterQueue(clients["sqs"], settings.dead_letter_queue_url)
        else:
            from scanbridge.adapters.local.memory import MemoryDeadLetterQueue

            dead_letters = MemoryDeadLetterQueue(settings.data_dir / "dead-letters")
    delivery = DeliveryService(tasks, artifacts, secrets, platform, api_key=settings.platform_api_key,
                               attempts=settings.delivery_attempts, backoff_s=settings.delivery_backoff_s,
                               dead_letters=dead_letters, sleep=sleep,
                               timeout_s=settings.delivery_timeout_s, max_timeout_s=settings.delivery_max_timeout_s,
                               retry_window_s=settings.delivery_retry_window_s,
                               max_backoff_s=settings.delivery_max_backoff_s,
                               platform_configured=platform_configured)
    if launcher is None:
        if settings.launcher == "batch":
            from scanbridge.adapters.aws.batch import BatchJobLauncher

            launcher = BatchJobLauncher(clients["batch"], settings.job_queue, settings.job_definition)
        else:
            from scanbridge.adapters.local.launcher import LocalJobLauncher

            launcher = LocalJobLauncher(max_workers=settings.max_workers, log_dir=settings.data_dir / "logs",
                                        on_finished=delivery.on_job_finished_later, retries=settings.worker_retries,
                                        task_timeout_s=settings.task_timeout_s, work_dir=settings.data_dir / "work")
    intake = IntakeService(tasks, launcher, secrets, default_model=settings.default_model,
                           max_scans=settings.max_scans_per_task,
                           model_for_stain=lambda stain: catalog.default_for(stain, fallback=settings.default_model))
    queries = QueryService(tasks, artifacts, launcher)
    control = ControlService(tasks, launcher, delivery, queries)
    return Container(settings=settings, tasks=tasks, artifacts=artifacts, secrets=secrets, launcher=launcher,
                     platform=platform, catalog=catalog, intake=intake, delivery=delivery, queries=queries,
                     control=control, dead_letters=dead_letters)


def in_memory(settings: Settings, *, launcher: JobLauncher | None = None) -> Container:
    """A container over in-memory stores and (unless given) a launcher that starts nothing (`scanbridge mhs`:
    one scan, this process its worker; results are still posted to the platform)."""
    from scanbridge.adapters.local.memory import (
        FernetSecretBox,
        MemoryArtifactStore,
        MemoryJobLauncher,
        MemoryTaskStore,
    )

    return bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(),
                     launcher=launcher or MemoryJobLauncher())


def safe_fetcher(s: Settings) -> Fetcher:
    """The scan downloader with the settings' limits (allowed hosts, size, timeouts, attempts, minimum rate)."""
    from scanbridge.imaging.fetch import FetchPolicy, SafeFetcher

    return SafeFetcher(FetchPolicy(
        allowed_hosts=s.scan_host_patterns(), max_bytes=s.max_scan_bytes,
        connect_timeout_s=s.fetch_connect_timeout_s, read_timeout_s=s.fetch_read_timeout_s,
        attempts=s.fetch_attempts, total_timeout_s=s.download_timeout_s, min_bytes_per_s=s.download_min_bytes_per_s,
        rate_window_s=s.download_rate_window_s))


def model_loader(s: Settings, models: ModelService | None = None, *, api: bool = False) -> ModelLoader:
    """A ModelLoader: the built-ins, plus the registered models of `models` when given.

    `api`: the API process's (`/v1/infer`): the default device and no TensorRT cache; otherwise the
    worker's and `run-scan`'s, on SCANBRIDGE_DEVICE (with TensorRT when switched on), whose malloc is
    tuned for the tile pipeline (inference/heap.py)."""
    from scanbridge.inference.heap import tune_malloc
    from scanbridge.inference.runner import ModelLoader

    if api:
        return ModelLoader(intra_op_threads=s.intra_op_threads, source=models)
    tune_malloc()  # a process that runs scans: large blocks given back when freed (inference/heap.py)
    return ModelLoader(intra_op_threads=s.intra_op_threads, source=models, device=s.device, tensorrt=s.tensorrt,
                       cache_dir=s.data_dir / "tensorrt")


class _Configured(enum.Enum):
    """`build_processing`'s "not given: as the settings say" (None there means "switched off")."""

    BY_SETTINGS = "by settings"


BY_SETTINGS = _Configured.BY_SETTINGS
Checkpoints = Callable[[str, str], CheckpointStore]  # (task_id, scan_id) -> that scan's checkpoint store


def build_processing(container: Container, *, fetcher: Fetcher | None = None, loader: ModelLoader | None = None,
                     analyzer: ScanAnalyzer | None = None, opener: ScanOpener | None = None,
                     artifact_writer: ArtifactWriter | _Configured | None = BY_SETTINGS,
                     qc: ScanQc | _Configured | None = BY_SETTINGS,
                     checkpoints: Checkpoints | _Configured | None = BY_SETTINGS) -> ProcessingService:
    """The worker's processing service (imports the readers and onnxruntime, so only the worker calls it).

    Tests and `scanbridge mhs` replace parts; `artifact_writer`, `qc` and `checkpoints` given as None switch
    that step off, left out they follow the settings."""
    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.inference.runner import Analyzer
    from scanbridge.services.processing import ProcessingService

    s = container.settings
    fetcher = fetcher or safe_fetcher(s)
    loader = loader or model_loader(s, container.catalog)
    analyzer = analyzer or Analyzer(loader, tile_size=None, batch_size=s.batch_size, readers=s.reader_threads,
                                    max_tiles=s.max_tiles_per_scan, min_tissue=s.tile_min_tissue)
    checked_loader = loader

    def check_task(model: str) -> None:
        """Before any download: the device works (DEVICE_UNAVAILABLE) and the model exists (MODEL_NOT_FOUND)."""
        checked_loader.check_device()
        checked_loader.check(model)

    if artifact_writer is BY_SETTINGS:
        from scanbridge.services.artifacts import ScanArtifactWriter

        artifact_writer = ScanArtifactWriter(container.artifacts)
    if qc is BY_SETTINGS:
        qc = _default_qc(s)
    if checkpoints is BY_SETTINGS:
        checkpoints = _checkpoints(container.artifacts, s)

    def qc_blocks(model: str) -> bool:
        try:
            return bool(container.catalog.spec(model or s.default_model).outputs.get("qc_blocks_inference", True))
        except Exception:  # noqa: BLE001 - a model the catalog does not know: QC blocks (the safe default)
            return True

    return ProcessingService(container.tasks, container.artifacts, fetcher, analyzer,
                             opener=opener or OpenedScan.open, work_dir=s.data_dir / "work",
                             check_model=check_task, artifact_writer=artifact_writer,
                             qc=qc, qc_blocks=qc_blocks, qc_fail_reasons=s.qc_fail_reasons,
                             # a token-less task needs the platform API key only where there is a platform to post to (a worker on
                             # Batch is not given the platform URL: the results step checks there)
                             has_api_key=bool(s.platform_api_key) or not s.platform_url, public_url=s.public_url,
                             scan_parallelism=s.scan_parallelism,
                             checkpoints=checkpoints)


def _checkpoints(artifacts: ArtifactStore, s: Settings) -> Checkpoints | None:
    """(task_id, scan_id) -> the scan's CheckpointStore (resumable scans), or None when switched off."""
    if s.checkpoint_interval_s <= 0:
        return None
    from scanbridge.domain.storage_keys import checkpoint_prefix
    from scanbridge.services.checkpoints import ArtifactCheckpoints

    return lambda task_id, scan_id: ArtifactCheckpoints(artifacts, checkpoint_prefix(task_id, scan_id),
                                                        interval_s=s.checkpoint_interval_s)


def _default_qc(s: Settings) -> ScanQc | None:
    """The real quality control (imaging.qc, on the open scan) with the settings' thresholds, or None when
    switched off."""
    if not s.qc_enabled:
        return None
    from functools import partial

    from scanbridge.imaging.qc import QcThresholds, run_qc

    return partial(run_qc, thresholds=QcThresholds(min_tissue_fraction=s.qc_min_tissue_fraction,
                                                    blur_mpp=s.qc_blur_mpp, min_laplacian_var=s.qc_min_laplacian_var,
                                                    min_sharpness=s.qc_min_sharpness))
