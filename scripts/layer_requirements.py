#!/usr/bin/env python3
"""Print the Lambda layer's requirements, generated from pyproject.toml: the base dependencies + [api].

`layers/scanbridge/Makefile` (what `sam build` runs) pipes this into pip, so the layer cannot drift from
the `[api]` extra. Self-references (`scanbridge[x]`) are expanded; boto3/botocore are left out because
the Lambda runtime provides them. Standard library only (tomllib: Python >= 3.11).

    python scripts/layer_requirements.py [--extra api] [--pyproject PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: what the AWS Lambda Python runtime already has on its path (the layer must not shadow it)
RUNTIME_PROVIDED = frozenset({"boto3", "botocore"})
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def canonical(name: str) -> str:
    """A distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    """The canonical distribution name a requirement line names."""
    match = _NAME.match(line)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    return canonical(match.group(1))


def extra_requirements(extra: str | None, pyproject: Path = PYPROJECT, *, base: bool = True) -> list[str]:
    """Every requirement of `extra` (None: the base only), self-references expanded, in first-seen order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    own = canonical(project["name"])
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", [])) if base else []
    seen: set[str] = set()

    def expand(name: str) -> None:
        if name in seen:
            return
        if name not in extras:
            raise KeyError(f"pyproject.toml has no extra [{name}]")
        seen.add(name)
        for line in extras[name]:
            match = _NAME.match(line)
            if match and canonical(match.group(1)) == own:
                for inner in (match.group(2) or "").split(","):
                    if inner.strip():
                        expand(inner.strip())
            elif line not in out:
                out.append(line)

    if extra:
        expand(extra)
    return out


def layer_requirements(pyproject: Path = PYPROJECT, extra: str = "api") -> list[str]:
    """The layer's requirement lines: base + `extra`, without what the Lambda runtime provides."""
    return [r for r in extra_requirements(extra, pyproject) if requirement_name(r) not in RUNTIME_PROVIDED]


def main(argv: list[str] | None = None) -> int:
    """Write the requirements to stdout, one per line (pip's -r format)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", default="api")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    lines = layer_requirements(args.pyproject, args.extra)
    sys.stdout.write(f"# generated from {args.pyproject.name} (base + [{args.extra}]) by "
                     "scripts/layer_requirements.py: do not edit\n")
    sys.stdout.write("".join(line.split("#")[0].strip() + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
