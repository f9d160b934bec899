"""Dependencies say where they run: every import of src/ is declared in the extra of the code that runs it,
[gpu] is [worker] with onnxruntime-gpu, and the built layer holds exactly base + [api] (generated, not kept).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO
from tests.deploy.conftest import _load_generator

SRC = REPO / "src" / "scanbridge"

#: entry point -> the extra whose install must be able to import it (module-level imports, followed)
ENTRY_POINTS: dict[str, str | None] = {
    "scanbridge.client": None,  # the client SDK: the base install (httpx) is enough
    "scanbridge.entrypoints.lambda_api": "api",
    "scanbridge.entrypoints.lambda_webhook": "api",
    "scanbridge.entrypoints.lambda_results": "api",
    "scanbridge.entrypoints.worker": "worker",
    "scanbridge.entrypoints.mhs": "worker",
    "scanbridge.entrypoints.cli": "worker",  # the console script in the worker image (each command imports its own)
    "scanbridge.entrypoints.local_stack": "local",
    "scanbridge.entrypoints.mcp_server": "local",
}
#: the console script also runs beside the local stack (`serve`, `mcp`, `submit`, `tasks`): importable there too
ALSO_IMPORTED_WITH = {"scanbridge.entrypoints.cli": "local"}
#: what the API Lambda must never have in its layer (the worker's and the local stack's packages)
NOT_IN_LAYER = {"numpy", "scipy", "onnxruntime", "onnxruntime-gpu", "onnx", "openslide-python", "openslide-bin",
                "pydicom", "highdicom", "scikit-image", "opencv-python-headless", "moto", "uvicorn", "mcp",
                "boto3", "botocore", "pyyaml", "playwright", "cfn-lint"}


GEN = _load_generator()  # scripts/layer_requirements.py, loaded as the layer's Makefile runs it


def declared(extra: str | None) -> set[str]:
    """Canonical names of every distribution base + `extra` installs directly."""
    return {GEN.requirement_name(r) for r in GEN.extra_requirements(extra)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path) -> tuple[list[str], list[str]]:
    """(module-level, lazy) absolute import names of a file; `if TYPE_CHECKING:` blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: list[str] = []
    lazy: list[str] = []
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]

    def names(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
        return [base, *(f"{base}.{a.name}" for a in node.names)]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).extend(names(child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, lazy


def _own_closure(entry: str) -> set[str]:
    """The scanbridge modules `import entry` runs (module-level imports, followed)."""
    return set(_walk(entry))


def _third_party(name: str) -> str | None:
    top = name.split(".")[0]
    return None if top in sys.stdlib_module_names or top in ("scanbridge", "") else top


def import_time_closure(entry: str) -> dict[str, set[str]]:
    """Third-party import name -> the modules importing it, over everything `import entry` runs."""
    found: dict[str, set[str]] = {}
    for module, names in _walk(entry).items():
        for name in names:
            third = _third_party(name)
            if third:
                found.setdefault(third, set()).add(module)
    return found


def _walk(entry: str) -> dict[str, list[str]]:
    """Each scanbridge module `import entry` runs -> the names it imports at module level: its parent
    packages (they run first) and the scanbridge modules it imports, followed."""
    seen: dict[str, list[str]] = {}
    stack = [entry]
    while stack:
        module = stack.pop()
        if module in seen or module not in MODULES:
            continue
        seen[module] = names = _imports(MODULES[module])[0]
        parts = module.split(".")
        stack.extend(".".join(parts[:i]) for i in range(2, len(parts)))
        stack.extend(n for n in names if n.startswith("scanbridge."))
    return seen


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    return md.packages_distributions()


def distributions(import_name: str) -> set[str]:
    """Canonical names of the installed distributions that provide a top-level import name."""
    return {GEN.canonical(d) for d in _providers().get(import_name, [])}


@pytest.mark.parametrize(("entry", "extra"), sorted([*ENTRY_POINTS.items(), *ALSO_IMPORTED_WITH.items()]))
def test_what_an_entry_point_imports_is_declared_in_its_extra(entry: str, extra: str | None) -> None:
    # GIVEN an entry point and the extra that installs where it runs
    allowed = declared(extra)
    # WHEN everything its import runs is followed
    closure = import_time_closure(entry)
    # THEN each third-party package is a direct requirement of base + that extra
    missing = {name: sorted(mods) for name, mods in closure.items() if not distributions(name) & allowed}
    assert not missing, f"imported when {entry} loads but not declared in [{extra}]: {missing}"


@pytest.mark.parametrize("entry", sorted(e for e, extra in ENTRY_POINTS.items() if extra in ("api", "worker")
                                          and e != "scanbridge.entrypoints.cli"))
def test_the_deployed_entry_points_load_no_dev_tools_and_no_client(entry: str) -> None:
    # GIVEN what the Lambdas, the worker and MHS load when they start
    loaded = _own_closure(entry)
    # THEN nothing of devtools/ (the stand-in platform, generators, the bench) nor the client SDK and its file server
    assert not {m for m in loaded if m.startswith(("scanbridge.devtools", "scanbridge.client"))}, sorted(loaded)


def test_every_import_of_src_is_declared_somewhere() -> None:
    # GIVEN every import in src/, module-level and lazy
    everything = declared("dev")
    missing: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        top, lazy = _imports(path)
        for name in top + lazy:
            third = _third_party(name)
            if third and not distributions(third) & everything:
                missing.setdefault(third, []).append(module)
    # THEN each maps to a distribution that pyproject.toml declares
    assert not missing, f"undeclared imports: {missing}"


def test_the_gpu_extra_is_the_worker_extra_with_onnxruntime_gpu() -> None:
    # GIVEN the two extras of the worker image / THEN the same lines but onnxruntime -> onnxruntime-gpu
    worker = {GEN.requirement_name(r): r for r in GEN.extra_requirements("worker", base=False)}
    gpu = {GEN.requirement_name(r): r for r in GEN.extra_requirements("gpu", base=False)}
    assert "onnxruntime" in worker and "onnxruntime-gpu" in gpu
    assert "onnxruntime-gpu" not in worker and "onnxruntime" not in gpu
    worker.pop("onnxruntime")
    gpu.pop("onnxruntime-gpu")
    assert {k: Requirement(v) for k, v in worker.items()} == {k: Requirement(v) for k, v in gpu.items()}


def test_dev_installs_every_extra_and_the_worker_image_none_of_the_dev_tools() -> None:
    # GIVEN the extras / THEN [dev] holds api, worker and local; [worker] and [gpu] no moto, cfn-lint, playwright
    dev = declared("dev")
    for extra in ("api", "worker", "local"):
        assert declared(extra) <= dev, extra
    for extra in ("worker", "gpu"):
        assert not declared(extra) & {"moto", "cfn-lint", "playwright", "pytest", "mypy", "uvicorn", "mcp"}, extra


def test_no_layer_requirements_are_kept_by_hand() -> None:
    # GIVEN the layer's folder / THEN no requirements file: the Makefile generates them from pyproject
    assert not list((REPO / "layers").rglob("requirements*.txt"))
    makefile = (REPO / "layers" / "scanbridge" / "Makefile").read_text()
    assert "scripts/layer_requirements.py" in makefile and "--extra api" in makefile


def test_the_built_layer_holds_base_and_api_and_nothing_of_the_worker(built_layer: Path) -> None:
    # GIVEN the layer as its Makefile builds it
    found = {GEN.canonical(d.metadata["Name"]): d.version for d in md.distributions(path=[str(built_layer)])}
    # THEN every generated requirement is there at a version it allows, scanbridge too
    for line in GEN.layer_requirements():
        req = Requirement(line)
        name = GEN.canonical(req.name)
        assert name in found, f"{name} is in [api] but not in the layer"
        assert req.specifier.contains(found[name], prereleases=True), (name, found[name], str(req.specifier))
    assert "scanbridge" in found
    # AND none of the worker's, the local stack's or the runtime's own packages
    assert not set(found) & NOT_IN_LAYER, sorted(set(found) & NOT_IN_LAYER)


def test_the_built_layer_ships_bytecode_its_runtime_loads_unchecked(built_layer: Path,
                                                                   lambda_runtime: tuple[str, str]) -> None:
    # GIVEN the layer as its Makefile builds it, and the runtime's bytecode tag and magic number
    probe = "import importlib.util, sys; print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())"
    tag, magic = subprocess.run([lambda_runtime[0], "-S", "-I", "-c", probe], check=True, capture_output=True,
                                text=True, timeout=60).stdout.split()
    sources = sorted(built_layer.rglob("*.py"))
    assert len(sources) > 500
    # THEN every module has a .pyc of that runtime, hash-based and never checked against its source (PEP 552
    # flags 0b01): Python neither recompiles it nor tries to write one on read-only /opt
    unusable = []
    for source in sources:
        cached = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        header = cached.read_bytes()[:8] if cached.exists() else b""
        if header[:4] != bytes.fromhex(magic) or int.from_bytes(header[4:8], "little") != 0b01:
            unusable.append(str(source.relative_to(built_layer)))
    assert unusable == [], unusable[:10]
