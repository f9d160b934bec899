"""`scanbridge dev platform`: a local platform for newcomers.

Serves scan files behind presigned-style URLs (X-Amz-* parameters, an expiry), prints the webhook
body the platform's "debug" case algorithm writes into task notes (PLATFORM.md section 5) or sends it,
receives the results POST, checks it against the platform contract and prints a readable report; with
--send, then the bridge's own word on the task once it has recorded the delivery (GET /tasks/{id} beside
the webhook URL), so that a `scanbridge tasks` right after it lists the task's final status.
Bounded: it exits once results arrived (and the bridge's status was read, at most BRIDGE_WAIT_S), or
after --timeout seconds.

Exit status: 0 results arrived and follow the contract; 1 results arrived with problems (or the
bridge refused the webhook); 2 no results before the timeout.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from scanbridge.adapters.platform_http import PCHAR
from scanbridge.devtools.local_platform import FakePlatform, ReceivedPost
from scanbridge.domain import geojson as gj
from scanbridge.domain.results import geojson_problems, qupath_problems
from scanbridge.domain.status import TERMINAL

BRIDGE_WAIT_S = 30.0  # how long the bridge may take to record the platform's answer to its results POST


def scan_ids_for(files: list[Path]) -> dict[str, Path]:
    """A scan id per file: its stem (letters, digits, -_.), made unique with a suffix."""
    ids: dict[str, Path] = {}
    for path in files:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "scan"
        sid, n = base, 2
        while sid in ids:
            sid, n = f"{base}-{n}", n + 1
        ids[sid] = path
    return ids


def scan_dimensions(path: Path) -> tuple[int, int] | None:
    """Level-0 (width, height) of a scan file, or None when no reader opens it."""
    try:
        from scanbridge.imaging.readers import open_scan

        reader = open_scan([path])
        try:
            return reader.metadata.dimensions
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - a file the bridge cannot open is a fine test case too
        return None


def local_jwt(expires_s: int = 3600) -> str:
    """A task-style JWT with an `exp` (signed with a throwaway key: the bridge never verifies it)."""
    import jwt

    return jwt.encode({"exp": int(time.time()) + expires_s, "iss": "scanbridge-dev-platform"},
                      secrets.token_hex(32), algorithm="HS256")


def webhook_body(platform: FakePlatform, scan_ids: list[str], *, task_id: str, model: str, company_id: str,
                 case_id: str, expires_s: int, jwt_token: str | None = None) -> dict[str, Any]:
    """The platform's debug-request body for the served scans (its field order)."""
    urls = {sid: platform.url_for(sid, expires_s=expires_s) for sid in scan_ids}
    body: dict[str, Any] = {
        "company_id": company_id,
        "scans": dict(urls),
        "scan_urls": {sid: [url] for sid, url in urls.items()},
        "stains": {sid: {"value": "HE", "stain_code": "HE", "label": "H&E"} for sid in scan_ids},
        "case_id": case_id,
        "task_id": task_id,
        "model_name": model,
    }
    if jwt_token:
        body["jwt_token"] = jwt_token
    return body


def check_results(post: ReceivedPost, *, task_id: str, dims: dict[str, tuple[int, int] | None],
                  bearer: str | None = None) -> list[str]:
    """Every way a results POST breaks PLATFORM.md section 2 (empty when it follows it)."""
    from urllib.parse import quote

    problems: list[str] = []
    expected_path = f"/api/v3/external/results/{quote(task_id, safe=PCHAR)}"
    if post.path != expected_path:
        problems.append(f"posted to {post.path}, expected {expected_path}")
    auth = post.authorization or ""
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        problems.append("no Authorization: Bearer header")
    elif bearer is not None and auth[7:] != bearer:
        problems.append("the Bearer is not the one expected (task JWT or platform API key)")
    if (post.content_type or "").split(";")[0].strip() != "application/json":
        problems.append(f"Content-Type is {post.content_type!r}, not application/json")
    body = post.body
    if not isinstance(body, dict):
        return [*problems, "the body is not a JSON object"]
    if not isinstance(body.get("caseResults"), dict):
        problems.append("caseResults missing or not an object")
    scans = body.get("scanResults")
    if not isinstance(scans, list):
        return [*problems, "scanResults missing or not an array"]
    seen: list[str] = []
    for i, scan in enumerate(scans):
        where = f"scanResults[{i}]"
        if not isinstance(scan, dict) or not isinstance(scan.get("scanId"), str):
            problems.append(f"{where}: scanId missing or not a string")
            continue
        sid = scan["scanId"]
        where = f"scan {sid}"
        seen.append(sid)
        if sid not in dims:
            problems.append(f"{where}: not a scan of this task")
        results = scan.get("results")
        if results is not None:
            summary = ((results or {}).get("report") or {}).get("summary") if isinstance(results, dict) else None
            if summary is not None and not (isinstance(summary, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in summary.items())):
                problems.append(f"{where}: results.report.summary is not a flat map of text")
        reasons = scan.get("qcFailReasons")
        if reasons is not None and not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
            problems.append(f"{where}: qcFailReasons is not an array of strings")
        fc = scan.get("geojson")
        if fc is not None:
            size = dims.get(sid)
            w, h = size if size else (None, None)
            problems += [f"{where}: {p}" for p in geojson_problems(fc, w, h) + qupath_problems(fc)]
    for sid in dims:
        if seen.count(sid) != 1:
            problems.append(f"scan {sid}: {seen.count(sid)} results (expected exactly one)")
    return problems


def format_report(post: ReceivedPost, problems: list[str]) -> str:
    """A readable account of one results POST and its problems."""
    auth = post.authorization or ""
    shown = f"{auth.split(' ')[0]} <{len(auth.partition(' ')[2])} chars>" if auth else "none"  # never the secret
    lines = [f"results POST {post.path}", f"  Authorization: {shown}"]
    body = post.body if isinstance(post.body, dict) else {}
    case = ((body.get("caseResults") or {}).get("report") or {}).get("summary") or {}
    for k, v in case.items():
        lines.append(f"  case  {k}: {v}")
    for scan in body.get("scanResults") or []:
        if not isinstance(scan, dict):
            continue
        lines.append(f"  scan {scan.get('scanId')}")
        summary = ((scan.get("results") or {}).get("report") or {}).get("summary") or {}
        for k, v in summary.items():
            lines.append(f"    {k}: {v}")
        if scan.get("qcFailReasons"):
            lines.append(f"    qcFailReasons: {', '.join(scan['qcFailReasons'])}")
        url = (scan.get("results") or {}).get("external_url")
        if url:
            lines.append(f"    external_url: {url}")
        features = list(gj.features(scan.get("geojson")))
        kinds: dict[str, int] = {}
        for f in features:
            kind = f"{gj.geometry_type(f)}/{gj.properties(f).get('annotation_type')}"
            kinds[kind] = kinds.get(kind, 0) + 1
        lines.append(f"    geojson: {len(features)} features" +
                     (" (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")" if kinds else ""))
    lines.append("contract: OK" if not problems else f"contract: {len(problems)} problem(s)")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def platform_command(files: list[Path], *, port: int = 8901, send: str | None = None, task_id: str | None = None,
                     model: str = "", company_id: str = "2380941", case_id: str = "aHVtYW5DYXNlOjI0MjEzNjY=",
                     jwt: bool = False, api_key: str | None = None, expires: int = 3600,
                     timeout: float = 300.0) -> int:
    """`scanbridge dev platform`: serve `files`, print or send the webhook, check the results (exit as above)."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    ids = scan_ids_for(list(files))
    dims = {sid: scan_dimensions(path) for sid, path in ids.items()}
    task_id = task_id or f"local-{secrets.token_hex(4)}"
    token = local_jwt() if jwt else None
    platform = FakePlatform(files=ids, port=port)
    try:
        platform.start()
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (is another process using it? try --port)",
              file=sys.stderr)
        return 2
    with platform:
        body = webhook_body(platform, list(ids), task_id=task_id, model=model, company_id=company_id,
                            case_id=case_id, expires_s=expires, jwt_token=token)
        out = sys.stdout
        print(f"local platform on {platform.base_url} serving {len(ids)} scan(s): "
              + ", ".join(f"{sid} ({d[0]}x{d[1]})" if d else f"{sid} (unreadable)" for sid, d in dims.items()),
              file=out)
        print("start the bridge with:\n  SCANBRIDGE_PLATFORM_URL=" + platform.base_url
              + f" SCANBRIDGE_ALLOWED_SCAN_HOSTS={platform.netloc}"
              + ("" if token else " SCANBRIDGE_PLATFORM_API_KEY=<any key>") + " scanbridge serve", file=out)
        print("webhook body:", file=out)
        print(json.dumps(body, indent=2), file=out)
        out.flush()
        if send:
            import httpx

            try:
                resp = httpx.post(send, json=body, timeout=30)
            except httpx.HTTPError as exc:
                print(f"could not send the webhook to {send}: {type(exc).__name__}", file=sys.stderr)
                return 1
            print(f"sent to {send}: {resp.status_code} {resp.text[:300]}", file=out)
            if resp.status_code >= 300:
                return 1
        else:
            print("send it with:\n  curl -X POST http://127.0.0.1:8000/webhook -H 'Content-Type: application/json' "
                  f"--data '{json.dumps(body)}'", file=out)
        print(f"waiting up to {timeout:g} s for the results ...", file=out)
        out.flush()
        posts = platform.wait_for_posts(1, timeout_s=timeout)
        if not posts:
            print(f"no results within {timeout:g} s", file=out)
            return 2
        post = posts[0]
        problems = check_results(post, task_id=task_id, dims=dims, bearer=token or api_key)
        print(format_report(post, problems), file=out)
        if send:
            print(bridge_outcome(send, task_id), file=out)
        return 1 if problems else 0


def bridge_outcome(webhook_url: str, task_id: str, *, wait_s: float = BRIDGE_WAIT_S) -> str:
    """The bridge's status of the task, read from GET /tasks/{id} beside `webhook_url` once it is terminal:
    the results POST has been answered, but the bridge records the answer just after (polled, at most `wait_s`)."""
    import httpx

    base = webhook_url.rsplit("/webhook", 1)[0]
    deadline = time.monotonic() + wait_s
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                resp = client.get(f"{base}/tasks/{task_id}")
            except httpx.HTTPError as exc:
                return f"bridge: the task's status could not be read ({type(exc).__name__})"
            if resp.status_code != 200:
                return f"bridge: the task's status could not be read (HTTP {resp.status_code})"
            status = str(resp.json().get("status"))
            if status in TERMINAL:
                return f"bridge: task {task_id} {status}"
            if time.monotonic() >= deadline:
                return f"bridge: task {task_id} still {status} after {wait_s:g} s"
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    """`python -m scanbridge.devtools.platform_cli ARGS`: the same as `scanbridge dev platform ARGS`."""
    from scanbridge.entrypoints.cli import main as cli

    return cli(["dev", "platform", *(sys.argv[1:] if argv is None else argv)])
