"""`scanbridge serve` on a busy port: a clear message and a non-zero exit, before anything starts, and never
"serving on"."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path


def test_a_busy_port_fails_clearly_without_announcing(tmp_path: Path) -> None:
    # GIVEN a loopback port something already listens on
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")}
        # WHEN serve is started on it
        out = subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "serve", "--port", str(port)],
                             cwd=tmp_path, env={**env, "SCANBRIDGE_DATA_DIR": str(tmp_path / "d")},
                             capture_output=True, text=True, timeout=60, check=False)
    # THEN it exits 1 saying why, never printed "serving on", and started nothing (no state written)
    assert out.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in out.stderr
    assert "--port" in out.stderr and "serving on" not in out.stdout + out.stderr
    assert not (tmp_path / "d" / "state").exists()


def test_a_second_serve_on_the_same_data_folder_fails_in_one_line(tmp_path: Path) -> None:
    # GIVEN a data folder whose state another serve holds (its lock taken, as that serve's moto server takes it)
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")}
    with open(state / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # WHEN serve is started on that folder
        out = subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "serve", "--port", "0"],
                             cwd=tmp_path, env={**env, "SCANBRIDGE_DATA_DIR": str(tmp_path / "d")},
                             capture_output=True, text=True, timeout=120, check=False)
    # THEN it exits 1 with one line saying why and what to do: no traceback, no "serving on", no "stopped"
    assert out.returncode == 1, out
    said = out.stdout + out.stderr
    assert f"scanbridge serve: the moto server did not start: {state} is in use by another scanbridge serve" in said
    assert "another SCANBRIDGE_DATA_DIR" in said
    assert "Traceback" not in said and "serving on" not in said and "scanbridge stopped" not in said, said
