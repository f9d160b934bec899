"""One settings class for every entry point; field names match template.yaml's environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

S3_HOSTS = "*.s3.amazonaws.com,*.s3.*.amazonaws.com,s3.amazonaws.com,s3.*.amazonaws.com"


class Settings(BaseSettings):
    """Every knob of scanbridge, read from `SCANBRIDGE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SCANBRIDGE_", extra="ignore")

    # Where results go and where scans may come from.
    platform_url: str = Field("", description="Base URL results are POSTed to")
    platform_api_key: str = Field("", description="Bearer key used when a webhook has no jwt_token")
    allowed_scan_hosts: str = Field(S3_HOSTS, description="Comma-separated host[:port] patterns")
    max_scan_bytes: int = 20 * 1024**3
    max_scans_per_task: int = 50
    fetch_connect_timeout_s: float = 10.0
    fetch_read_timeout_s: float = 60.0
    fetch_attempts: int = 3
    download_timeout_s: float = Field(3600.0, gt=0, description="one file, every attempt and redirect together")
    download_min_bytes_per_s: float = Field(16384.0, ge=0, description="slower over a rate window is cut (0: off)")
    download_rate_window_s: float = Field(30.0, gt=0, description="seconds the minimum rate is averaged over")

    # Storage and AWS.
    data_dir: Path = Path(".scanbridge")
    local_state: Literal["journal", "journal-fsync", "memory"] = Field(
        "journal", description="scanbridge serve: moto's state journalled under data_dir/state (-fsync: each "
                               "write fsynced), or memory (lost at exit)")
    table_name: str = "scanbridge-tasks"
    models_table_name: str = "scanbridge-models"
    bucket_name: str = "scanbridge-artifacts"
    kms_key_id: str = "alias/scanbridge"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    # Jobs.
    launcher: Literal["batch", "local"] = "local"
    job_queue: str = ""
    job_definition: str = ""
    max_workers: int = 2
    warm_workers: int = Field(1, ge=0, description="scanbridge serve: spare workers kept started ahead (stack "
                                                   "imported, waiting for a task; 0: each task starts a fresh one)")
    scan_parallelism: int = 2

    # Models and inference.
    default_model: str = "tissue"
    tile_size: int = 512
    batch_size: int | None = Field(None, ge=1, description="tiles per batch (unset: sized to the model's input and "
                                                           "the device's free memory)")
    intra_op_threads: int = 0
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when it really works, else CPU "
                                                                       "(logged); cuda: fail (DEVICE_UNAVAILABLE) "
                                                                       "without it; cpu")
    reader_threads: int | None = Field(None, ge=1, description="tile reader threads of the worker (unset: the "
                                                               "cores less one, 2..16)")
    tensorrt: bool = Field(False, description="TensorRT execution provider first (FP16, engine cache under "
                                              "data_dir/tensorrt), CUDA as its fallback")
    tile_min_tissue: float | None = Field(None, ge=0.0, le=1.0,
                                          description="share of a tile's core that must be tissue for it to run "
                                                      "(unset: the model's own, else 0.5)")

    # Delivery.
    dead_letter_queue_url: str = ""
    delivery_attempts: int = 5
    delivery_backoff_s: float = 1.0
    delivery_timeout_s: float = 30.0
    delivery_max_timeout_s: float = Field(300.0, description="each retry waits twice as long for an answer, up to this")
    delivery_retry_window_s: float = Field(86400.0, ge=0, description="retries go on this long after the first attempt (0: only the first burst)")
    delivery_max_backoff_s: float = Field(300.0, gt=0, description="the longest wait between two scheduled retries")

    # Protections (off when empty; template.yaml switches them on).
    webhook_secret: str = ""
    api_keys: str = ""
    admin_token: str = ""
    max_body_bytes: int = 1024 * 1024
    max_tiles_per_scan: int = 200_000
    checkpoint_interval_s: float = Field(10.0, ge=0, description="a scan's finished tiles are checkpointed this often (0: off)")
    worker_retries: int = 1
    heartbeat_interval_s: float = 10.0
    stale_after_s: float = 120.0
    task_timeout_s: float = Field(43200.0, ge=0, description="a task's deadline from its first worker start (0: none)")

    public_url: str = ""
    allowed_hosts: str = Field("", description="open local mode: Host names served besides the loopback ones "
                                               "(comma-separated, e.g. a LAN name for `serve --host 0.0.0.0`)")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="console logs: text on a terminal, JSON otherwise (auto), or always one of them")

    # Quality control before inference (imaging/qc.py).
    qc_enabled: bool = True
    qc_fail_reasons: dict[str, str] = Field(default_factory=dict,
                                            description='JSON: scanbridge code -> the company\'s QC reason name')
    qc_min_tissue_fraction: float = 0.001
    qc_blur_mpp: float = 0.5
    qc_min_sharpness: float = Field(0.15, ge=0, description="BLURRY below this median sharpness of the tissue "
                                    "tiles (Laplacian variance over grey variance: relative to the content)")
    qc_min_laplacian_var: float = Field(0.0, ge=0, description="optional absolute floor on the median "
                                        "Laplacian variance of the tissue tiles (0: off)")

    def api_key_map(self) -> dict[str, str]:
        """SCANBRIDGE_API_KEYS ("key:company_id,key2:company_id2") as key -> company_id."""
        keys: dict[str, str] = {}
        for item in self.api_keys.split(","):
            key, sep, company = item.strip().rpartition(":")
            if sep and key and company:
                keys[key] = company
        return keys

    def scan_host_patterns(self) -> list[str]:
        """The allowlist as a list of lower-case host[:port] patterns."""
        return [h.strip().lower() for h in self.allowed_scan_hosts.split(",") if h.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
