"""Children of `scanbridge serve` die with it: Linux PR_SET_PDEATHSIG, set by the child itself.

`python -m scanbridge.adapters.local.lifetime --parent PID MODULE ARGS...` asks the kernel to SIGKILL
this process when its parent dies (even by SIGKILL, which runs no clean-up of the parent's), checks
that the parent is still PID (it may have died before the request landed), then runs MODULE as
`python -m MODULE ARGS...` would. Set in the child, not in a `preexec_fn`: that would make subprocess
fork the threaded API process instead of vfork-ing it. The kernel fires the signal when the parent
*thread* that started the child ends; the local stack starts children from its main thread (moto)
or from the launcher's long-lived pool threads (workers). Elsewhere than Linux it only runs MODULE.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent dies; exits if it is already gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request landed: nobody would ever stop this one
    return True


def bound_command(module: str, parent_pid: int | None = None) -> list[str]:
    """The command line that runs `python -m module` bound to `parent_pid` (default: this process)."""
    return [sys.executable, "-P", "-m", "scanbridge.adapters.local.lifetime", "--parent",
            str(os.getpid() if parent_pid is None else parent_pid), module]


def main(argv: list[str] | None = None) -> None:
    """`--parent PID MODULE ARGS...`: bind to the parent, then run MODULE with ARGS as its argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent: int | None = None
    if len(args) >= 2 and args[0] == "--parent":
        parent = int(args[1])
        args = args[2:]
    if not args:
        raise SystemExit("usage: python -m scanbridge.adapters.local.lifetime [--parent PID] MODULE [ARGS...]")
    die_with_parent(parent)
    module, sys.argv = args[0], [args[0], *args[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
