"""The client SDK of a running bridge: its REST API, webhooks for some scans, live following, local files.

Needs only the base install (httpx and the standard library; signing webhooks also needs
`standardwebhooks`, as in `scanbridge[api]` / `[local]`), so a script that submits scans does not load
the server's or the worker's stack. `scanbridge submit`, `scanbridge tasks` and `scanbridge mcp` are
built on it::

    from scanbridge.client import BridgeClient, LocalFileServer, build_webhook, follow, scan_ids

    with BridgeClient("http://127.0.0.1:8000") as bridge, LocalFileServer(port=8902) as files:
        scans = dict(zip(scan_ids(["boxes.tiff"]), [files.add(Path("boxes.tiff"))], strict=True))
        task = bridge.submit(build_webhook(scans, model="tissue"))
        follow(bridge, task["task_id"], timeout_s=600, out=print)
"""

from scanbridge.client.bridge import DEFAULT_URL, BridgeClient, ClientError
from scanbridge.client.files import DEFAULT_FILES_PORT, LocalFileServer, LoopbackServer
from scanbridge.client.tasks import (
    TERMINAL,
    build_webhook,
    describe,
    describe_delivery,
    downloaded,
    follow,
    is_url,
    scan_ids,
    summarize_results,
)

__all__ = ["DEFAULT_FILES_PORT", "DEFAULT_URL", "TERMINAL", "BridgeClient", "ClientError", "LocalFileServer",
           "LoopbackServer", "build_webhook", "describe", "describe_delivery", "downloaded", "follow", "is_url",
           "scan_ids", "summarize_results"]
