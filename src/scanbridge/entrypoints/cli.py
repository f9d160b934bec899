"""The `scanbridge` command: serve, worker, run-scan, inspect, evaluate, mhs, mcp, submit, tasks, and
dev (make-slide, bench, platform, make-image, build-models).

One Typer app. Its command names and options are a public contract (docs/cli.md): add, never
rename. Each command imports what it runs only when it runs, so `--help` is quick and a command needs
only the extra of the code it drives. `main(argv)` returns the exit code (tests call it).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

import typer

from scanbridge.client import DEFAULT_FILES_PORT, DEFAULT_URL

if TYPE_CHECKING:
    from scanbridge.client import BridgeClient, LocalFileServer
    from scanbridge.domain.results import ScanResult
    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.inference.session import OnnxModel

#: the built-in models (inference/zoo.py BUILTINS) and the bench's own (devtools/bench.py BENCH_MODELS),
#: named here so `--help` needs no onnx import; tests/integration/test_cli.py keeps them equal
BUILTIN_MODELS = ("ihc-positivity", "nuclei", "tissue")
BENCH_MODELS = (*BUILTIN_MODELS, "bench-conv", "bench-resnet50", "bench-resnet50-slim")
#: imaging/tiling.py DEFAULT_MIN_TISSUE, for `dev bench --min-tissue`'s help (kept equal by the same test)
DEFAULT_MIN_TISSUE = 0.25
#: devtools/bench.py REPEAT and REPEAT_BUDGET_S, for `dev bench --repeat` (kept equal by the same test)
BENCH_REPEAT, BENCH_REPEAT_BUDGET_S = 3, 10.0


def _exit_code(result: Any, **_: Any) -> None:
    """Every command returns its exit status; Typer's standalone mode would drop it otherwise."""
    raise typer.Exit(int(result or 0))


CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(name="scanbridge", help=__doc__.split("\n\n")[0], add_completion=False,
                  result_callback=_exit_code, context_settings=CONTEXT, pretty_exceptions_enable=False)
dev = typer.Typer(help="developer tools: synthetic slides and images, the bench, a local platform, the models",
                  context_settings=CONTEXT)
app.add_typer(dev, name="dev")

# Options the client commands share (`mcp`, `submit`, `tasks`: built on the SDK, scanbridge/client/)
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="SCANBRIDGE_API_KEY", show_envvar=False,
    help="a tenant API key or the admin token (default $SCANBRIDGE_API_KEY)")]
WebhookSecret = Annotated[str | None, typer.Option(
    "--webhook-secret", envvar="SCANBRIDGE_WEBHOOK_SECRET", show_envvar=False,
    help="sign the webhook (Standard Webhooks) when the bridge checks signatures "
         "(default $SCANBRIDGE_WEBHOOK_SECRET)")]
FilesPort = Annotated[int, typer.Option(
    "--files-port", help="loopback port serving local files (the bridge must allow 127.0.0.1:PORT)")]
Url = Annotated[str, typer.Option(
    "--url", envvar="SCANBRIDGE_URL", show_envvar=False,
    help=f"the running bridge (default $SCANBRIDGE_URL or {DEFAULT_URL})")]


@app.command(help="run the local stack (API + moto + worker launcher)")
def serve(
    host: Annotated[str, typer.Option("--host", help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port the API listens on")] = 8000,
) -> int:
    """`scanbridge serve`."""
    from scanbridge.entrypoints.local_stack import serve as serve_stack

    return serve_stack(host, port)


@app.command(help="process one task (what Batch runs)")
def worker(
    task_id: Annotated[str, typer.Option("--task-id", help="the task to process (its record is in DynamoDB)")],
    scan_index: Annotated[int | None, typer.Option(
        "--scan-index", help="process only this scan (sorted by id); Batch array children get "
                             "AWS_BATCH_JOB_ARRAY_INDEX")] = None,
) -> int:
    """`scanbridge worker`."""
    from scanbridge.entrypoints.worker import main as worker_main

    return worker_main(["--task-id", task_id, *([] if scan_index is None else ["--scan-index", str(scan_index)])])


#: FILE arguments of inspect and run-scan: what makes one scan (imaging/local_scans.py)
SCAN_FILES_HELP = ("scan files or folders: the DICOM files of one series are one scan, a folder stands for "
                   "the scan files below it")


@app.command(help="print what the readers find in scans (JSON per scan; exit 1 if one is unreadable)")
def inspect(files: Annotated[list[str], typer.Argument(metavar="FILE", help=SCAN_FILES_HELP)]) -> int:
    """`scanbridge inspect`."""
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.imaging.local_scans import local_scans
    from scanbridge.imaging.readers import detect_format, open_scan

    status = 0
    for scan in local_scans(files):
        info: dict[str, Any] = {"file": scan.given, **_more_files(scan.files)}
        try:
            reader = open_scan(scan.files)
            info |= {"detected": detect_format(scan.files[0]), **reader.metadata.to_json()}
            reader.close()
        except ScanbridgeError as exc:
            info["error"] = {"code": exc.code, "message": exc.message}
            status = 1
        print(json.dumps(info, indent=2))
    return status


def _more_files(files: list[Path]) -> dict[str, list[str]]:
    """`{"files": [...]}` for a scan of several files (a DICOM series), else nothing."""
    return {"files": [str(f) for f in files]} if len(files) > 1 else {}


@app.command("run-scan", help="run a model offline on local scan files, with a progress bar; writes "
             "<name>.geojson, <name>.result.json and <name>-artifacts/ (exit 1 if a file failed, 2 bad model)")
def run_scan(
    files: Annotated[list[str], typer.Argument(metavar="FILE", help=SCAN_FILES_HELP)],
    model: Annotated[str, typer.Option("--model", help=f"built-in model: {', '.join(BUILTIN_MODELS)}")] = "tissue",
    onnx: Annotated[str | None, typer.Option(
        "--onnx", metavar="MODEL.onnx",
        help="an unregistered ONNX model to run instead of --model (needs --spec)")] = None,
    spec: Annotated[str | None, typer.Option(
        "--spec", metavar="SPEC.json", help="the ModelSpec JSON of --onnx (checked as an upload is)")] = None,
    out: Annotated[str, typer.Option("--out", metavar="DIR", help="folder the outputs go to")] = "scanbridge-out",
    no_artifacts: Annotated[bool, typer.Option(
        "--no-artifacts", help="write only the GeoJSON and the result")] = False,
) -> int:
    """`scanbridge run-scan`: settings (device, batch, threads) from SCANBRIDGE_*."""
    from scanbridge.bootstrap import model_loader
    from scanbridge.config import Settings
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.domain.feature_spool import result_geojson_chunks, result_json_chunks
    from scanbridge.imaging.local_scans import local_scans
    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.inference.analyze import analyze_scan
    from scanbridge.inference.device import default_reader_threads
    from scanbridge.logs import setup_logging

    settings = Settings()
    setup_logging("scanbridge-run-scan", settings.log_level, settings.log_format)
    loader = model_loader(settings)  # the built-ins (a file of its own comes with --onnx/--spec)
    try:  # SCANBRIDGE_DEVICE=cuda without a working CUDA stops here, before any file is read
        loader.check_device()
    except ScanbridgeError as exc:
        print(f"run-scan: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    readers = settings.reader_threads or default_reader_threads()
    try:
        chosen = _unregistered_model(onnx, spec, device=settings.device) if onnx or spec else loader.load(model)
    except ScanbridgeError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        for problem in (exc.details or {}).get("problems", []):
            print(f"  - {problem}", file=sys.stderr)
        return 2
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    status = 0
    for local in local_scans(files):
        stem = local.name
        try:
            with OpenedScan.open(local.files) as scan:  # once: the analysis and the artifacts share it
                with TileProgress(stem) as bar:
                    analysis = analyze_scan(stem, scan, chosen, progress=bar, batch_size=settings.batch_size,
                                            readers=readers)
                result = analysis.result
                with (folder / f"{stem}.geojson").open("wb") as fh:  # an object result's features copied
                    fh.writelines(result_geojson_chunks(result))    # from its spool as text, never as dicts
                with (folder / f"{stem}.result.json").open("wb") as fh:
                    fh.writelines(result_json_chunks(result))
                artifacts = [] if no_artifacts else _write_artifacts(scan, stem, result, folder / f"{stem}-artifacts")
        except ScanbridgeError as exc:
            print(f"{local.given}: {exc.code}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        summary = (result.results or {}).get("report", {}).get("summary", {})
        print(json.dumps({"file": local.given, **_more_files(local.files), "summary": summary,
                          "geojson": str(folder / f"{stem}.geojson"), "artifacts": [str(a) for a in artifacts]}))
    return status


class TileProgress:
    """A rich progress bar of one scan's tiles on stderr; `bar(done, total)` is analyze_scan's callback.

    On a terminal it redraws in place; elsewhere (CI, Batch logs) rich prints only its last state."""

    def __init__(self, stem: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("tiles"), TimeElapsedColumn(), console=Console(stderr=True),
                                  redirect_stdout=False, redirect_stderr=False)
        self._task = self._progress.add_task(stem, total=None)

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=max(total, 1))

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def _unregistered_model(onnx_path: str | None, spec_path: str | None, device: str | None = None) -> OnnxModel:
    """`--onnx MODEL.onnx --spec SPEC.json`: the spec parsed and the file checked as an upload is, then loaded."""
    import re

    from scanbridge.domain.errors import ValidationError
    from scanbridge.inference.session import OnnxModel
    from scanbridge.inference.validation import validate_onnx
    from scanbridge.services.models import parse_spec

    if not onnx_path or not spec_path:
        raise ValidationError("--onnx and --spec go together: the ONNX file and its ModelSpec JSON")
    try:
        config = json.loads(Path(spec_path).read_text())
        data = Path(onnx_path).read_bytes()
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read the model: {exc}") from exc
    if not isinstance(config, dict):
        raise ValidationError(f"{spec_path} must hold a JSON object (a ModelSpec)")
    if "name" not in config:  # a local try needs no registry name: the file's stem
        config["name"] = re.sub(r"[^a-z0-9._-]", "-", Path(onnx_path).stem.lower()).lstrip("._-")[:64] or "model"
    spec = parse_spec(config)
    validate_onnx(spec, data)
    return OnnxModel(spec, data, device=device)


def _write_artifacts(scan: OpenedScan, stem: str, result: ScanResult, folder: Path) -> list[Path]:
    """The same artifacts the worker stores (overlay, label mask, CSV, crops, DICOM), as files, each
    written to its file as it is made."""
    from scanbridge.adapters.local.folder import FolderArtifactStore
    from scanbridge.domain.storage_keys import artifact_key
    from scanbridge.services.artifacts import ScanArtifactWriter

    prefix = artifact_key("run-scan", stem, "")
    store = FolderArtifactStore(folder, prefix)
    folder.mkdir(parents=True, exist_ok=True)
    ScanArtifactWriter(store)("run-scan", stem, scan, result)
    return [store.path(key) for key in sorted(store.written)]


@app.command(help="AP50 and Jaccard of a prediction against ground truth (GeoJSON or .npy label masks; "
             "exit 2 on unreadable input)")
def evaluate(
    pred: Annotated[str, typer.Argument(metavar="PRED", help="the prediction: GeoJSON, an /v1/infer answer or .npy")],
    gt: Annotated[str, typer.Argument(metavar="GT", help="the ground truth, in the same forms")],
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as one JSON object")] = False,
) -> int:
    """`scanbridge evaluate`."""
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.services.evaluation import evaluate as score
    from scanbridge.services.evaluation import load_source

    try:
        result = score(load_source(pred), load_source(gt)).to_json()
    except (ScanbridgeError, OSError) as exc:
        print(f"evaluate: {exc.message if isinstance(exc, ScanbridgeError) else exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(result))
    else:
        iou = result["mean_matched_iou"]
        print(f"AP50 {result['ap50']:.3f}  Jaccard {result['jaccard']:.3f}  TP {result['tp']}  FP {result['fp']}  "
              f"FN {result['fn']}  pred {result['n_pred']}  gt {result['n_gt']}  "
              f"mean matched IoU {'n/a' if iou is None else f'{iou:.3f}'}")
    return 0


@app.command(help="run as the platform's Model Hosting Service container (settings from the environment: "
             "HOST, TASK_ID, SCAN_ID, SCAN_URL, JWT_TOKEN, ...)")
def mhs() -> int:
    """`scanbridge mhs`."""
    from scanbridge.entrypoints.mhs import main as mhs_main

    return mhs_main([])


@app.command(help="an MCP server on stdio (tools: submit_scan, get_task, list_tasks, ...) for a bridge at "
             "--url, or an in-process local stack without --url")
def mcp(
    url: Annotated[str | None, typer.Option(
        "--url", envvar="SCANBRIDGE_URL", show_envvar=False,
        help="the running bridge (default $SCANBRIDGE_URL; none: an in-process local stack)")] = None,
    api_key: ApiKey = None,
    webhook_secret: WebhookSecret = None,
    files_port: Annotated[int, typer.Option(
        "--files-port", help="loopback port serving local scan paths (the bridge must allow 127.0.0.1:PORT)")]
    = DEFAULT_FILES_PORT,
) -> int:
    """`scanbridge mcp`."""
    from scanbridge.entrypoints.mcp_server import run_stdio

    return run_stdio(url=url, api_key=api_key, webhook_secret=webhook_secret, files_port=files_port)


@app.command(help="submit local files or URLs to a running bridge; --wait follows it live (exit 0 COMPLETED, "
             "1 other end, 2 refused, 3 timeout)")
def submit(
    inputs: Annotated[list[str], typer.Argument(metavar="FILE_OR_URL", help="local scan files or URLs")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    model: Annotated[str, typer.Option(
        "--model", help=f"model name, e.g. {', '.join(BUILTIN_MODELS)} or a registered one "
                        "(default: the bridge's default for the stain)")] = "",
    wait: Annotated[bool, typer.Option(
        "--wait", help="follow the task's events until it ends; print the summary")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="give up waiting after this many seconds")] = 1800.0,
    task_id: Annotated[str, typer.Option("--task-id", help="task id (default: cli-<uuid>)")] = "",
    company_id: Annotated[str, typer.Option("--company-id", help="company_id in the webhook")] = "local",
    webhook_secret: WebhookSecret = None,
    files_port: FilesPort = DEFAULT_FILES_PORT,
) -> int:
    """`scanbridge submit`: exit 0 accepted (with `--wait`: COMPLETED), 1 another end, 2 refused or
    unreachable, 3 timed out."""
    from scanbridge.client import BridgeClient, ClientError, LocalFileServer, is_url

    missing = [v for v in inputs if not is_url(v) and not Path(v).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}")
        return 2
    files = LocalFileServer(port=files_port) if any(not is_url(v) for v in inputs) else None
    with BridgeClient(url, api_key=api_key, webhook_secret=webhook_secret) as bridge:
        try:
            return _submit(bridge, files, inputs, model=model, wait=wait, timeout=timeout, task_id=task_id,
                           company_id=company_id)
        except ClientError as exc:
            print(f"error: {exc}")
            return 2
        finally:
            if files is not None:
                files.stop()


def _submit(bridge: BridgeClient, files: LocalFileServer | None, inputs: list[str], *, model: str, wait: bool,
            timeout: float, task_id: str, company_id: str) -> int:
    """`submit` once the bridge is open: check it takes our files and serve them, send, follow (see `submit`)."""
    from scanbridge.client import (
        TERMINAL,
        ClientError,
        build_webhook,
        describe_delivery,
        downloaded,
        follow,
        is_url,
        scan_ids,
        summarize_results,
    )

    if files is not None:
        try:
            allowed = bridge.allowed_scan_hosts()
        except ClientError as exc:
            print(f"error: cannot read {bridge.base_url}/config/available: {exc}")
            return 2
        if files.netloc not in allowed:
            print(f"error: the bridge does not allow scans from {files.netloc}. Restart it with "
                  f"SCANBRIDGE_ALLOWED_SCAN_HOSTS={','.join([*allowed, files.netloc])} (or pass --files-port "
                  "with a port it lists)")
            return 2
        try:
            files.start()
        except OSError as exc:
            print(f"error: cannot serve local files on {files.netloc}: {exc}")
            return 2
    urls = [v if is_url(v) or files is None else files.add(Path(v)) for v in inputs]
    accepted = bridge.submit(build_webhook(dict(zip(scan_ids(inputs), urls, strict=True)), model=model,
                                           task_id=task_id, company_id=company_id))
    task_id = accepted["task_id"]
    print(json.dumps({"task_id": task_id, "status": accepted["status"], "created": accepted["created"]}))
    if not wait:
        if files is not None:
            print(f"serving {sum(not is_url(v) for v in inputs)} local file(s) from {files.netloc} until the "
                  "worker has them")
            follow(bridge, task_id, timeout_s=timeout, out=print, until=downloaded)
        return 0
    task = follow(bridge, task_id, timeout_s=timeout, out=print)
    if task["status"] not in TERMINAL:
        print(f"timed out after {timeout:.0f} s; the task is {task['status']}")
        return 3
    try:
        summary: dict[str, Any] = summarize_results(bridge.results(task_id))
    except ClientError as exc:
        summary = {"results": exc.code}
    print(json.dumps({"task_id": task_id, "status": task["status"], "error_code": task.get("error_code"),
                      "delivery": describe_delivery(task), **summary}, indent=2))
    return 0 if task["status"] == "COMPLETED" else 1


@app.command(help="list a running bridge's tasks with status and progress")
def tasks(
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    status: Annotated[str | None, typer.Option(
        "--status", help="only tasks in this status (e.g. RUNNING, COMPLETED)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many tasks, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON page")] = False,
) -> int:
    """`scanbridge tasks`: the running bridge's tasks, newest first (a table, or JSON with --json)."""
    from scanbridge.client import BridgeClient, ClientError

    with BridgeClient(url, api_key=api_key) as bridge:
        try:
            page = bridge.tasks(status=status, limit=limit)
        except ClientError as exc:
            print(f"error: {exc}")
            return 2
    if as_json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'TASK':40} {'STATUS':16} {'PROGRESS':>8}  {'STEP':18} {'MODEL':12} CREATED")
    for t in page["tasks"]:
        p = t.get("progress") or {}
        print(f"{t['task_id'][:40]:40} {t['status']:16} {p.get('percent', 0.0):7.1f}%  "
              f"{str(p.get('step', ''))[:18]:18} {str(t.get('model') or '')[:12]:12} {t['created_at']}")
    return 0


@dev.command("make-slide", help="write a synthetic Aperio-style slide with known tissue (and nuclei)")
def make_slide(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="output .svs/.tif path")],
    width: Annotated[int, typer.Option("--width", help="level-0 width in pixels")] = 8192,
    height: Annotated[int, typer.Option("--height", help="level-0 height in pixels")] = 8192,
    tissue_fraction: Annotated[float, typer.Option("--tissue-fraction", help="share of the slide that is tissue")]
    = 0.25,
    tile_size: Annotated[int, typer.Option("--tile-size", help="TIFF tile side in pixels")] = 256,
    mpp: Annotated[float, typer.Option("--mpp", help="µm per level-0 pixel")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", help="random seed of the layout")] = 0,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality of the tiles")] = 85,
    no_nuclei: Annotated[bool, typer.Option("--no-nuclei", help="omit nuclei")] = False,
    positive_fraction: Annotated[float, typer.Option(
        "--positive-fraction", help="share of nuclei stained DAB-positive (IHC)")] = 0.0,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Gaussian blur sigma in level-0 px")] = 0.0,
    blank: Annotated[bool, typer.Option("--blank", help="background only")] = False,
    truth_json: Annotated[Path | None, typer.Option(
        "--truth-json", metavar="PATH", help="also write the exact truth (tissue, nuclei) as JSON")] = None,
) -> int:
    """`scanbridge dev make-slide`."""
    from scanbridge.devtools.synth import make_slide_command

    return make_slide_command(out, width=width, height=height, tissue_fraction=tissue_fraction, tile_size=tile_size,
                              mpp=mpp, seed=seed, quality=quality, nuclei=not no_nuclei,
                              positive_fraction=positive_fraction, blur_sigma=blur_sigma, blank=blank,
                              truth_json=truth_json)


class Device(StrEnum):
    """`dev bench --device`: as SCANBRIDGE_DEVICE."""

    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


@dev.command("bench", help="measure decode, model, pipeline and naive loop on one slide (exit 2 no such "
             "slide, 3 device unavailable)")
def bench(
    slide: Annotated[Path, typer.Argument(metavar="SLIDE", help="the slide to measure")],
    model: Annotated[str, typer.Option("--model", help=f"one of {', '.join(BENCH_MODELS)}")] = "tissue",
    as_json: Annotated[bool, typer.Option("--json", help="print exactly one JSON object on stdout")] = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="tiles per batch (default: sized to the device)")] = None,
    readers: Annotated[int | None, typer.Option(
        "--readers", help="reader threads (default: the cores less one, 2..16)")] = None,
    tile_size: Annotated[int | None, typer.Option("--tile-size", help="model tile size (default: the model's)")]
    = None,
    overlap: Annotated[int | None, typer.Option(
        "--overlap", help="tile overlap in model px (default: the model's)")] = None,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime intra-op threads (0: all cores)")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="do not use a GPU even when one is present")] = False,
    device: Annotated[Device | None, typer.Option(
        "--device", help="as SCANBRIDGE_DEVICE (default auto; cuda without a working CUDA: exit 3)")] = None,
    tensorrt: Annotated[bool, typer.Option(
        "--tensorrt", help="TensorRT first (FP16, engine cache), CUDA as fallback")] = False,
    trt_cache: Annotated[Path | None, typer.Option(
        "--trt-cache", help="TensorRT engine cache folder (default $SCANBRIDGE_DATA_DIR/tensorrt)")] = None,
    no_naive: Annotated[bool, typer.Option("--no-naive", help="skip the naive loop")] = False,
    truth: Annotated[Path | None, typer.Option(
        "--truth", help="truth JSON of a synthetic slide (adds tissue_fraction)")] = None,
    min_tissue: Annotated[float | None, typer.Option(
        "--min-tissue", help=f"share of a tile's core that must be tissue (default: the model's, else "
                             f"{DEFAULT_MIN_TISSUE}; 0: any tissue)")] = None,
    repeat: Annotated[int, typer.Option(
        "--repeat", min=1, help=f"runs of each timed phase, the fastest reported (a phase stops repeating once "
                                f"its runs took {BENCH_REPEAT_BUDGET_S:g} s)")] = BENCH_REPEAT,
) -> int:
    """`scanbridge dev bench`."""
    from scanbridge.devtools.bench import bench_command

    return bench_command(slide, model, as_json=as_json, batch_size=batch_size, readers=readers, tile_size=tile_size,
                         overlap=overlap, threads=threads, cpu=cpu, device=device.value if device else None,
                         tensorrt=tensorrt, trt_cache=trt_cache, naive=not no_naive, truth=truth,
                         min_tissue=min_tissue, repeat=repeat)


@dev.command("platform", help="a local platform: serves scans, sends the webhook, checks results (exit 0 "
             "results follow the contract, 1 problems or the webhook refused, 2 no results before --timeout)")
def platform(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="scan files to serve (one scan each)")],
    port: Annotated[int, typer.Option("--port", help="loopback port to serve on (0: any free port)")] = 8901,
    send: Annotated[str | None, typer.Option(
        "--send", metavar="URL", help="POST the webhook there, e.g. http://127.0.0.1:8000/webhook")] = None,
    task_id: Annotated[str | None, typer.Option("--task-id", help="task id (default: a fresh one)")] = None,
    model: Annotated[str, typer.Option(
        "--model", help=f"model_name in the webhook, e.g. {', '.join(BUILTIN_MODELS)} (empty: the bridge's "
                        "default)")] = "",
    company_id: Annotated[str, typer.Option("--company-id", help="company_id in the webhook")] = "2380941",
    case_id: Annotated[str, typer.Option("--case-id", help="case_id in the webhook")] = "aHVtYW5DYXNlOjI0MjEzNjY=",
    jwt: Annotated[bool, typer.Option(
        "--jwt", help="add a jwt_token (the real platform does; its debug request does not)")] = False,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="the SCANBRIDGE_PLATFORM_API_KEY the bridge uses: check the Bearer is exactly this")]
    = None,
    expires: Annotated[int, typer.Option("--expires", help="presigned URL lifetime in seconds")] = 3600,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="give up waiting for results after this many seconds")] = 300.0,
) -> int:
    """`scanbridge dev platform` (devtools/platform_cli.py)."""
    from scanbridge.devtools.platform_cli import platform_command

    return platform_command(files, port=port, send=send, task_id=task_id, model=model, company_id=company_id,
                            case_id=case_id, jwt=jwt, api_key=api_key, expires=expires, timeout=timeout)


@dev.command("make-image", help="write a small image with known nuclei (and its truth GeoJSON) for /v1/infer "
             "and evaluate")
def make_image(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="the image to write (.png, .jpg or .tif)")],
    truth: Annotated[Path | None, typer.Option(
        "--truth", metavar="GEOJSON", help="also write the true nuclei as a GeoJSON FeatureCollection")] = None,
    size: Annotated[int, typer.Option("--size", help="side in pixels (0.5 µm/px)")] = 640,
    seed: Annotated[int, typer.Option("--seed", help="jitter of the nuclei grid")] = 0,
) -> int:
    """`scanbridge dev make-image`."""
    from scanbridge.devtools.sample_image import make_image_command

    return make_image_command(out, truth=truth, size=size, seed=seed)


@dev.command("build-models", help="write the built-in ONNX models and their specs to a folder")
def build_models(out: Annotated[str, typer.Option("--out", metavar="DIR", help="the folder")] = "models") -> int:
    """`scanbridge dev build-models`."""
    from scanbridge.inference.zoo import BUILTINS

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (spec, build) in BUILTINS.items():
        (folder / f"{name}.onnx").write_bytes(build())
        (folder / f"{name}.json").write_text(spec.model_dump_json(indent=2))
        print(f"wrote {folder / (name + '.onnx')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scanbridge` console script: the command's exit status (2: a usage error)."""
    try:
        app(args=sys.argv[1:] if argv is None else list(argv), prog_name="scanbridge")
    except SystemExit as exc:  # Typer's standalone mode always ends here
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # SystemExit("message"), as Python itself would print it
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
