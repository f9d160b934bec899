"""The `scanbridge` console script in a fresh interpreter that sees only one install folder and src/.

Run as `python -S -I console_script.py SITE SRC scanbridge ARGS...`: sys.path becomes the interpreter's
folder (where a console script lives), SITE (what
`pip install --target SITE ".[worker]"` put there: the worker image's packages), SRC (the package
itself) and the standard library; then pyproject's `scanbridge = scanbridge.entrypoints.cli:main`
runs with ARGS, as the container's entry point does. Standard library only.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    site, src, *argv = sys.argv[1:]
    # first the scripts folder, as for a console script in a venv's bin/ (OpenCV's loader relies on it)
    bindir = os.path.dirname(sys.executable)
    sys.path[:] = [bindir, site, src, *(p for p in sys.path if "site-packages" not in p)]
    sys.argv = argv
    from scanbridge.entrypoints.cli import main as cli

    sys.exit(cli())


if __name__ == "__main__":
    main()
