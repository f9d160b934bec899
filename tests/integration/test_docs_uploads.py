"""The model uploads the docs show (`curl -X PUT ... /admin/models/NAME`) run as written, with curl, against a real
bridge on loopback, on files made the way the same pages say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from scanbridge.bootstrap import Container
from scanbridge.entrypoints.http.app import create_app
from tests.conftest import REPO, unavailable
from tests.integration.test_live import served

DOCS = REPO / "docs"
TOKEN = "admin-token-0123456789"


def _blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


def _uploads() -> list[str]:
    """Every `curl -X PUT` to /admin/models/ in a bash block of docs/, its continuation lines joined."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for block in _blocks(page.name, "bash"):
            for command in block.replace("\\\n", " ").splitlines():
                if command.startswith("curl -X PUT") and "/admin/models/" in command:
                    found.append(command)
    return found


def test_every_documented_model_upload_is_accepted_as_written(container: Container, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        unavailable("no curl on PATH")
    # GIVEN the files the pages say how to make: byom/ (bring-your-own-model.md), models/ (dev build-models),
    # my-tissue.json (the page's classification JSON, saved as it says), boxes.* (instance-models.md's snippet)
    def run(*args: str) -> None:
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, timeout=300)

    run(sys.executable, "-m", "scanbridge.devtools.byom_models", "--out", "byom")
    run(sys.executable, "-m", "scanbridge.entrypoints.cli", "dev", "build-models", "--out", "models")
    my_tissue = next(b for b in _blocks("bring-your-own-model.md", "json") if '"name": "my-tissue"' in b)
    (tmp_path / "my-tissue.json").write_text(my_tissue)
    snippet = next(b for b in _blocks("instance-models.md", "bash") if "python -c" in b)
    code = re.search(r'python -c "\n(.*?)\n"', snippet, flags=re.DOTALL)
    assert code is not None
    run(sys.executable, "-c", code.group(1))
    uploads = _uploads()
    assert len(uploads) >= 4, uploads
    container.settings.admin_token = TOKEN
    with served(create_app(container)) as url:
        for command in uploads:
            # WHEN each upload runs in a shell, with the admin token in the variable the command names
            shell = command.replace("http://127.0.0.1:8000", url) + " -sS -o answer.json -w '%{http_code}'"
            out = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 check=False, env={"PATH": "/usr/bin:/bin", "SCANBRIDGE_ADMIN_TOKEN": TOKEN})
            # THEN the bridge registered the model under the name in the URL
            answer = (tmp_path / "answer.json").read_text()
            assert out.returncode == 0 and out.stdout in ("200", "201"), (command, out.stdout, out.stderr, answer)
            assert json.loads(answer)["name"] == command.rsplit("/admin/models/", 1)[1].split()[0], answer
