"""The `scanbridge` command: serve, worker, run-scan, inspect, evaluate, mhs, mcp, submit, tasks, and
dev (make-slide, bench, platform, build-models)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scanbridge.inference.session import OnnxModel


def _serve(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.local_stack import serve

    return serve(args.host, args.port)


def _worker(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.worker import main

    return main(["--task-id", args.task_id])


def _inspect(args: argparse.Namespace) -> int:
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.imaging.readers import detect_format, open_scan

    status = 0
    for name in args.files:
        path = Path(name)
        try:
            reader = open_scan([path])
            info = {"file": name, "detected": detect_format(path), **reader.metadata.to_json()}
            reader.close()
        except ScanbridgeError as exc:
            info = {"file": name, "error": {"code": exc.code, "message": exc.message}}
            status = 1
        print(json.dumps(info, indent=2))
    return status


def _run_scan(args: argparse.Namespace) -> int:
    from scanbridge.config import Settings
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.imaging.readers import open_scan
    from scanbridge.inference.analyze import analyze_scan
    from scanbridge.inference.device import default_reader_threads
    from scanbridge.inference.runner import ModelLoader
    from scanbridge.logs import setup_logging

    settings = Settings()
    setup_logging("scanbridge-run-scan", settings.log_level, settings.log_format)
    loader = ModelLoader(intra_op_threads=settings.intra_op_threads, device=settings.device,
                         tensorrt=settings.tensorrt, cache_dir=settings.data_dir / "tensorrt")
    try:  # SCANBRIDGE_DEVICE=cuda without a working CUDA stops here, before any file is read
        loader.check_device()
    except ScanbridgeError as exc:
        print(f"run-scan: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    readers = settings.reader_threads or default_reader_threads()
    if args.onnx or args.spec:
        try:
            model = _unregistered_model(args.onnx, args.spec, device=settings.device)
        except ScanbridgeError as exc:
            print(f"{exc.code}: {exc.message}", file=sys.stderr)
            for problem in (exc.details or {}).get("problems", []):
                print(f"  - {problem}", file=sys.stderr)
            return 2
    else:
        model = loader.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.files:
        path = Path(name)
        stem = path.stem

        def bar(done: int, total: int, _stem: str = stem) -> None:
            width = 30
            filled = int(width * done / max(total, 1))
            print(f"\r{_stem}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} tiles", end="",
                  file=sys.stderr, flush=True)

        try:
            reader = open_scan([path])
            try:
                analysis = analyze_scan(stem, reader, model, progress=bar, batch_size=settings.batch_size,
                                        readers=readers)
            finally:
                reader.close()
        except ScanbridgeError as exc:
            print(f"\n{name}: {exc.code}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        print(file=sys.stderr)
        result = analysis.result
        (out / f"{stem}.geojson").write_text(json.dumps(result.geojson))
        (out / f"{stem}.result.json").write_text(json.dumps(result.model_dump(mode="json", exclude_none=True)))
        artifacts = _write_artifacts(path, stem, result, out / f"{stem}-artifacts") if not args.no_artifacts else []
        summary = (result.results or {}).get("report", {}).get("summary", {})
        print(json.dumps({"file": name, "summary": summary, "geojson": str(out / f"{stem}.geojson"),
                          "artifacts": [str(a) for a in artifacts]}))
    return status


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


def _write_artifacts(path: Path, stem: str, result: object, folder: Path) -> list[Path]:
    """The same artifacts the worker stores (overlay, label mask, CSV, crops, DICOM), as files."""
    from scanbridge.adapters.local.memory import MemoryArtifactStore
    from scanbridge.services.artifacts import ScanArtifactWriter, artifact_key

    store = MemoryArtifactStore()
    ScanArtifactWriter(store)("run-scan", stem, [path], result)  # type: ignore[arg-type]
    prefix = artifact_key("run-scan", stem, "")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key in store.list(prefix):
        target = folder / key[len(prefix):]
        target.write_bytes(store.get(key) or b"")
        written.append(target)
    return written


def _make_slide(args: argparse.Namespace) -> int:
    from scanbridge.imaging import synth

    return synth.main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    from scanbridge.inference import bench

    return bench.main(args.rest)


def _mhs(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.mhs import main

    return main([])


def _dev_platform(args: argparse.Namespace) -> int:
    from scanbridge.devtools import platform_cli

    return platform_cli.main(args.rest)


def _build_models(args: argparse.Namespace) -> int:
    from scanbridge.inference.zoo import BUILTINS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (spec, build) in BUILTINS.items():
        (out / f"{name}.onnx").write_bytes(build())
        (out / f"{name}.json").write_text(spec.model_dump_json(indent=2))
        print(f"wrote {out / (name + '.onnx')}")
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.mcp_server import run_stdio

    return run_stdio(url=args.url, api_key=args.api_key, webhook_secret=args.webhook_secret,
                     files_port=args.files_port)


def _submit(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.client import submit_main

    return submit_main(args)


def _tasks(args: argparse.Namespace) -> int:
    from scanbridge.entrypoints.client import tasks_main

    return tasks_main(args)


def _evaluate(args: argparse.Namespace) -> int:
    from scanbridge.domain.errors import ScanbridgeError
    from scanbridge.services.evaluation import evaluate, load_source

    try:
        result = evaluate(load_source(args.pred), load_source(args.gt)).to_json()
    except (ScanbridgeError, OSError) as exc:
        print(f"evaluate: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        iou = result["mean_matched_iou"]
        print(f"AP50 {result['ap50']:.3f}  Jaccard {result['jaccard']:.3f}  TP {result['tp']}  FP {result['fp']}  "
              f"FN {result['fn']}  pred {result['n_pred']}  gt {result['n_gt']}  "
              f"mean matched IoU {'n/a' if iou is None else f'{iou:.3f}'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="scanbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the local stack (API + moto + worker launcher)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="process one task (what Batch runs)")
    p.add_argument("--task-id", required=True)
    p.set_defaults(func=_worker)

    p = sub.add_parser("inspect", help="print what the readers find in scan files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("run-scan", help="run a model offline on local scan files")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="tissue")
    p.add_argument("--onnx", help="an unregistered ONNX model to run instead of --model (needs --spec)")
    p.add_argument("--spec", help="the ModelSpec JSON of --onnx (checked as an upload is)")
    p.add_argument("--out", default="scanbridge-out")
    p.add_argument("--no-artifacts", action="store_true", help="write only the GeoJSON and the result")
    p.set_defaults(func=_run_scan)

    p = sub.add_parser("evaluate", help="AP50 and Jaccard of a prediction against ground truth (GeoJSON or "
                       ".npy label masks)")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("mhs", help="run as the platform's Model Hosting Service container (settings from the "
                       "environment: HOST, TASK_ID, SCAN_ID, SCAN_URL, JWT_TOKEN, ...)")
    p.set_defaults(func=_mhs)

    _client_commands(sub)

    dev = sub.add_parser("dev", help="developer tools").add_subparsers(dest="dev_command", required=True)
    p = dev.add_parser("make-slide", help="write a synthetic Aperio-style slide", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_make_slide)
    p = dev.add_parser("bench", help="measure decode, model, pipeline and naive loop on one slide", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)
    p = dev.add_parser("platform", help="a local platform: serves scans, sends the webhook, checks results",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_dev_platform)
    p = dev.add_parser("make-image", help="write a small image with known nuclei (and its truth GeoJSON) "
                       "for /v1/infer and evaluate", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_make_image)
    p = dev.add_parser("build-models", help="write the built-in ONNX models to a folder")
    p.add_argument("--out", default="models")
    p.set_defaults(func=_build_models)
    return parser


def _client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`mcp`, `submit`, `tasks`: commands that talk to a running bridge (entrypoints/client.py)."""
    import os

    from scanbridge.entrypoints.client import DEFAULT_FILES_PORT, DEFAULT_URL

    def client_options(p: argparse.ArgumentParser, url_default: str | None = DEFAULT_URL) -> None:
        p.add_argument("--url", default=os.environ.get("SCANBRIDGE_URL", url_default),
                       help=f"the running bridge (default $SCANBRIDGE_URL or {url_default})")
        p.add_argument("--api-key", default=os.environ.get("SCANBRIDGE_API_KEY"),
                       help="a tenant API key or the admin token (default $SCANBRIDGE_API_KEY)")

    p = sub.add_parser("mcp", help="an MCP server on stdio (tools: submit_scan, get_task, list_tasks, ...) for a "
                       "bridge at --url, or an in-process local stack without --url")
    client_options(p, url_default=None)
    p.add_argument("--webhook-secret", default=os.environ.get("SCANBRIDGE_WEBHOOK_SECRET") or None)
    p.add_argument("--files-port", type=int, default=DEFAULT_FILES_PORT,
                   help="loopback port serving local scan paths (the bridge must allow 127.0.0.1:PORT)")
    p.set_defaults(func=_mcp)

    p = sub.add_parser("submit", help="submit local files or URLs to a running bridge; --wait follows it live")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_URL")
    client_options(p)
    p.add_argument("--model", default="", help="model name (default: the bridge's default for the stain)")
    p.add_argument("--wait", action="store_true", help="follow the task's events until it ends; print the summary")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up waiting after this many seconds")
    p.add_argument("--task-id", default="", help="task id (default: cli-<uuid>)")
    p.add_argument("--company-id", default="local")
    p.add_argument("--webhook-secret", default=os.environ.get("SCANBRIDGE_WEBHOOK_SECRET") or None,
                   help="sign the webhook (Standard Webhooks) when the bridge checks signatures")
    p.add_argument("--files-port", type=int, default=DEFAULT_FILES_PORT,
                   help="loopback port serving local files (the bridge must allow 127.0.0.1:PORT)")
    p.set_defaults(func=_submit)

    p = sub.add_parser("tasks", help="list a running bridge's tasks with status and progress")
    client_options(p)
    p.add_argument("--status", default=None, help="only tasks in this status (e.g. RUNNING, COMPLETED)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print the raw JSON page")
    p.set_defaults(func=_tasks)


def _make_image(args: argparse.Namespace) -> int:
    from scanbridge.devtools.sample_image import main as make_image

    return make_image(list(args.rest))


PASS_THROUGH = {"make-slide": _make_slide, "bench": _bench, "platform": _dev_platform, "make-image": _make_image}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scanbridge` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `dev make-slide|bench|platform` own their options: hand them everything after the subcommand
    # (argparse.REMAINDER drops options that come first, e.g. `dev platform --port 8901 FILE`).
    if len(argv) >= 2 and argv[0] == "dev" and argv[1] in PASS_THROUGH:
        return int(PASS_THROUGH[argv[1]](argparse.Namespace(rest=argv[2:])) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
