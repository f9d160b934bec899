"""The GPU worker image matches itself: the pinned onnxruntime-gpu wheel's CUDA provider links the CUDA
and cuDNN majors of batch/Dockerfile's base image, and the Batch stack asks for CUDA on the AL2023 GPU AMI.

The wheel (~250 MB) is downloaded once with `pip download` (a download, not an install) into
~/.cache/scanbridge/wheels (SCANBRIDGE_WHEEL_CACHE overrides) and read in place: only the provider
library's ELF header, program headers and dynamic section are decompressed from the zip member.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.integration.test_template import CfnLoader

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "batch" / "Dockerfile"
PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
PT_LOAD, PT_DYNAMIC, DT_NEEDED, DT_STRTAB = 1, 2, 1, 5


def elf_needed(fh: IO[bytes]) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file (what `readelf -d` lists as NEEDED).

    Hand-written (stdlib only, ~30 lines) rather than pyelftools: the dev stack need not grow for one
    test, and it reads a seekable zip member without extracting 280 MB.
    """
    head = fh.read(64)
    assert head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1, "not a 64-bit little-endian ELF"
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    fh.seek(phoff)
    table = fh.read(phentsize * phnum)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    assert dynamic is not None, "no dynamic section"
    fh.seek(dynamic[0])
    raw = fh.read(dynamic[1])
    entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
    strtab_vaddr = next(v for tag, v in entries if tag == DT_STRTAB)
    strtab = next(off + strtab_vaddr - va for va, off, size in loads if va <= strtab_vaddr < va + size)
    names = []
    for tag, value in entries:
        if tag == DT_NEEDED:
            fh.seek(strtab + value)
            names.append(fh.read(256).split(b"\0", 1)[0].decode())
    return names


def _pinned_version() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [re.fullmatch(r"onnxruntime-gpu\s*==\s*([\w.]+)", req.split(";")[0].strip()) for req in extras["gpu"]]
    found = [m.group(1) for m in pins if m]
    assert found, f"the gpu extra does not pin onnxruntime-gpu to one version (==): {extras['gpu']}"
    return found[0]


def _wheel(version: str) -> Path:
    """The pinned wheel from the cache, downloaded the first time (other cached versions are removed)."""
    cache = Path(os.environ.get("SCANBRIDGE_WHEEL_CACHE", Path.home() / ".cache" / "scanbridge" / "wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    name = f"onnxruntime_gpu-{version}-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel = cache / name
    if not wheel.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", f"onnxruntime-gpu=={version}", "--no-deps",
                               "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                               "--only-binary=:all:", "-d", str(cache), "-q"],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0 or not wheel.exists():
            pytest.skip(f"onnxruntime-gpu=={version} could not be downloaded (no registry?): {proc.stderr[-300:]}")
    for other in cache.glob("onnxruntime_gpu-*.whl"):
        if other != wheel:
            other.unlink()  # keep ONE wheel in the cache
    return wheel


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE))


def _major(needed: list[str], prefix: str) -> int | None:
    majors = {int(m.group(1)) for n in needed if (m := re.fullmatch(re.escape(prefix) + r"\.so\.(\d+)", n))}
    assert len(majors) <= 1, f"{prefix}: several majors {majors}"
    return majors.pop() if majors else None


@pytest.fixture(scope="module")
def wheel_facts() -> dict[str, Any]:
    version = _pinned_version()
    with zipfile.ZipFile(_wheel(version)) as zf:
        with zf.open(PROVIDER) as fh:
            needed = elf_needed(fh)  # type: ignore[arg-type]
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    return {"version": version, "needed": needed, "metadata": metadata}


def test_pinned_wheel_links_the_cuda_major_of_the_base_image(wheel_facts: dict[str, Any]) -> None:
    # GIVEN the pinned onnxruntime-gpu wheel's CUDA provider and the Dockerfile's base image
    image = _dockerfile_args()["CUDA_IMAGE"]
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", image)
    assert base, f"CUDA_IMAGE is not an nvidia/cuda cudnn-runtime tag: {image}"
    # WHEN we read the CUDA runtime and cuBLAS majors its provider library links
    needed = wheel_facts["needed"]
    cudart, cublaslt = _major(needed, "libcudart"), _major(needed, "libcublasLt")
    # THEN both are the base image's CUDA major (else onnxruntime silently runs every job on the CPU)
    assert cudart is not None and cublaslt is not None, needed
    assert cudart == cublaslt == int(base.group(1)), (wheel_facts["version"], needed, image)
    # AND the base's Ubuntu carries Python 3.12 as its python3, as the Lambdas
    assert base.group(4) == "24.04"


def test_pinned_wheel_wants_the_cudnn_major_of_the_image(wheel_facts: dict[str, Any]) -> None:
    # GIVEN the wheel's cuDNN requirement: a NEEDED libcudnn.so.N where the provider links it, and the
    # nvidia-cudnn-cuXX~=N extra it declares (1.28+ load cuDNN at run time instead of linking it)
    needed_major = _major(wheel_facts["needed"], "libcudnn")
    declared = re.findall(r"nvidia-cudnn-cu(\d+)~=(\d+)", wheel_facts["metadata"])
    assert declared, "the wheel declares no nvidia-cudnn requirement"
    # WHEN we compare them with the Dockerfile's CUDNN_MAJOR and CUDA_IMAGE
    args = _dockerfile_args()
    cuda_major = int(args["CUDA_IMAGE"].split(":")[1].split(".")[0])
    # THEN the cuDNN major matches (and is built for the image's CUDA major)
    assert {int(m) for _cu, m in declared} == {int(args["CUDNN_MAJOR"])}
    assert {int(cu) for cu, _m in declared} == {cuda_major}
    if needed_major is not None:
        assert needed_major == int(args["CUDNN_MAJOR"])


def test_elf_reader_reads_what_the_loader_reads() -> None:
    # GIVEN this interpreter's own libpython-free binary (an ELF every Linux CI has)
    exe = Path(sys.executable).resolve()
    with open(exe, "rb") as fh:
        if fh.read(4) != b"\x7fELF":
            pytest.skip("not an ELF system")
        fh.seek(0)
        # WHEN we read its NEEDED entries
        needed = elf_needed(fh)
    # THEN libc is among them, as the dynamic loader sees it
    assert any(n.startswith("libc.so.") for n in needed), needed


def test_image_installs_the_gpu_extra_only_and_asks_for_cuda() -> None:
    # GIVEN the Dockerfile
    text = DOCKERFILE.read_text()
    # THEN it installs `.[gpu]` (no dev stack), checks the provider's libraries and defaults to CUDA
    assert re.search(r'pip install "\.\[gpu\]"', text)
    assert "[dev]" not in text
    assert "check_cuda_libs.sh" in text and "SCANBRIDGE_DEVICE=cuda" in text


def test_batch_uses_the_al2023_gpu_ami_and_the_job_asks_for_cuda() -> None:
    # GIVEN template.yaml
    with open(REPO / "template.yaml", encoding="utf-8") as fh:
        resources = yaml.load(fh, Loader=CfnLoader)["Resources"]
    # WHEN we read the GPU compute environment and the worker's job definition
    ec2 = resources["GpuComputeEnvironment"]["Properties"]["ComputeResources"]["Ec2Configuration"]
    env = {e["Name"]: e["Value"] for e in
           resources["WorkerJobDefinition"]["Properties"]["ContainerProperties"]["Environment"]}
    # THEN the instances boot the ECS GPU AMI on Amazon Linux 2023 (driver 580: CUDA 13)
    assert [c["ImageType"] for c in ec2] == ["ECS_AL2023_NVIDIA"]
    # AND the job fails rather than run on the CPU when CUDA does not work
    assert env["SCANBRIDGE_DEVICE"] == "cuda"
