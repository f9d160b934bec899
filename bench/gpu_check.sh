#!/usr/bin/env bash
# The GPU check of issue #21, for a machine with one NVIDIA GPU, ~16 cores and no network:
#   bench/gpu_check.sh           the 40x slide (61440 x 51200 px, 60 % tissue) on CUDA (and TensorRT when
#                                onnxruntime has it), ResNet-50-class model built here; < 8 minutes
#   bench/gpu_check.sh --small   the same path on the CPU with a small slide and the slim ResNet (< 2 min)
# Prints ONE JSON object on stdout (tiles_per_s, pipeline_vs_bare, provider, batch_size, ...); progress on
# stderr. Exit 0: measured (the "targets" field says whether the issue's targets were met); 2: a Python
# package is missing and no wheel for it was carried; 3: no working CUDA (says exactly what is missing:
# it never falls back to the CPU); 4: a step failed or ran out of time.
#
# Uses the machine's own Python; the packages that
# image lacks come from wheels carried with the checkout in bench/wheels (bench/fetch_wheels.sh fetches
# them where a registry is reachable; list: bench/gpu_check_requirements.txt), scanbridge from this
# checkout. onnxruntime-gpu (~256 MB) cannot be carried within a 64 MiB limit: it must be installed on
# the machine, or its wheel put in bench/wheels (or $GPU_CHECK_WHEELS).
# Environment: GPU_CHECK_DIR (work folder, default /tmp/scanbridge-gpu-check; the slide is reused),
# GPU_CHECK_WHEELS (default bench/wheels), PYTHON (default python3), GPU_CHECK_TENSORRT=0 skips TensorRT,
# GPU_CHECK_BUDGET_S (default 540: every step is cut to what is left of it).
set -uo pipefail

SMALL=0
for arg in "$@"; do
  case "$arg" in
    --small) SMALL=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg" >&2; exit 4 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_CHECK_DIR:-/tmp/scanbridge-gpu-check}
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/bench/wheels}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$WORK"
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}  # the whole check, under a 10-minute command limit
left() { local l=$(( BUDGET_S - ($(date +%s) - START) )); (( l < ${1:-600} )) && echo "$(( l > 1 ? l : 1 ))" || echo "${1:-600}"; }
say() { echo "gpu_check [$(( $(date +%s) - START ))s]: $*" >&2; }
die() { local code=$1; shift; echo "gpu_check: FAILED: $*" >&2; exit "$code"; }

# ---------------------------------------------------------------- the machine's Python, plus a target dir
# Not a venv: the GPU image's python3 is itself a venv (/opt/torch/.venv), and a venv made from it would
# not see its packages. What is missing goes into $WORK/site (pip --target), first on PYTHONPATH, and
# scanbridge runs from this checkout's src/.
command -v "$PY" >/dev/null || die 2 "no $PY on this machine (set PYTHON=...)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die 2 "$("$PY" -V 2>&1) is older than Python 3.11"
VPY=$PY
SITE="$WORK/site"
mkdir -p "$SITE"
export PYTHONPATH="$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
say "python: $("$VPY" -c 'import sys; print(sys.executable, sys.version.split()[0])'), packages added in $SITE"

# ---------------------------------------------------------------- the packages the image lacks
absent=$("$VPY" - "$ROOT/bench/gpu_check_requirements.txt" <<'EOF'
import importlib.util, sys
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 2 and not parts[0].startswith("#") and importlib.util.find_spec(parts[0]) is None:
        print(*parts)
EOF
)
missing=()
install=()
while read -r module dist; do
  [[ -z "$module" ]] && continue
  name=${dist%%==*}
  found=$(compgen -G "$WHEELS/${name//-/_}-*.whl" || compgen -G "$WHEELS/$name-*.whl" || true)
  if [[ -n "$found" ]]; then
    install+=("$dist")
  else
    missing+=("$dist (import $module)")
  fi
done <<< "$absent"
if (( ${#missing[@]} )); then
  die 2 "missing Python packages and no wheel for them in $WHEELS: ${missing[*]}. Run bench/fetch_wheels.sh" \
        "where a registry is reachable and carry bench/wheels with the checkout."
fi
if (( ${#install[@]} )); then
  "$VPY" -m pip --version >/dev/null 2>&1 || die 2 "$PY has no pip to install ${install[*]}"
  say "installing from $WHEELS: ${install[*]}"
  "$VPY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --no-deps --upgrade \
    --target "$SITE" "${install[@]}" >&2 || die 4 "pip could not install ${install[*]} from $WHEELS"
fi
"$VPY" -c "import scanbridge.devtools.bench" || die 2 "scanbridge does not import (see the error above)"

# ---------------------------------------------------------------- the device: CUDA for real, or stop
DEVICE=cpu
MODEL=bench-resnet50-slim
if (( ! SMALL )); then
  DEVICE=cuda
  MODEL=bench-resnet50
  command -v nvidia-smi >/dev/null && say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  # CUDA/cuDNN libraries installed as pip packages (nvidia-*): make them loadable for onnxruntime-gpu
  libs=$("$VPY" - <<'EOF'
import glob, os, site, sys
roots = [*site.getsitepackages(), site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})))
EOF
)
  [[ -n "$libs" ]] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ! "$VPY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    gpu_wheel=$(ls "$WHEELS"/onnxruntime_gpu-*.whl 2>/dev/null | head -1)
    if [[ -n "$gpu_wheel" ]]; then
      say "installing $(basename "$gpu_wheel")"
      "$VPY" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$SITE" "$gpu_wheel" >&2 \
        || die 4 "pip could not install $gpu_wheel"
    else
      have=$("$VPY" -c "import onnxruntime as o; print(f'onnxruntime {o.__version__} with {o.get_available_providers()}')" 2>&1 | tail -1)
      pin=$(grep -o 'onnxruntime-gpu==[0-9.]*' "$ROOT/pyproject.toml" | head -1)
      die 3 "no CUDA execution provider: this machine has $have, not onnxruntime-gpu." \
            "Needed: ${pin:-onnxruntime-gpu} (a CUDA 13 build; ~256 MB, over the 64 MiB carry limit, and no registry" \
            "is reachable here). Install it on the machine or put its wheel in $WHEELS, then rerun." \
            "Not running on the CPU instead."
    fi
  fi
  probe=$("$VPY" -c "from scanbridge.inference.device import probe_cuda; p = probe_cuda(); print('ok' if p.ok else p.reason)" 2>&1 | tail -1)
  [[ "$probe" == ok ]] || die 3 "CUDA does not work with this onnxruntime: $probe"
  say "CUDA works (probe session ran on the device)"
fi

# ---------------------------------------------------------------- the slide
if (( SMALL )); then W=2048; H=1536; else W=61440; H=51200; fi
SLIDE="$WORK/slide-${W}x${H}.svs"
TRUTH="$WORK/slide-${W}x${H}.json"
GEN_S=0
if [[ ! -s "$SLIDE" || ! -s "$TRUTH" ]]; then
  say "writing a ${W}x${H} px 40x slide (0.25 um/px, 60 % tissue)"
  t0=$(date +%s)
  timeout "$(left 300)" "$VPY" -m scanbridge.devtools.synth "$SLIDE.part" --width "$W" --height "$H" --tissue-fraction 0.6 \
    --mpp 0.25 --no-nuclei --seed 21 --truth-json "$TRUTH" >&2 || die 4 "the slide generator failed or timed out"
  mv "$SLIDE.part" "$SLIDE"
  GEN_S=$(( $(date +%s) - t0 ))
fi

# ---------------------------------------------------------------- the bench (CUDA, then TensorRT)
run_bench() {  # $1: output file, then extra options (one run per phase: device time is counted, and the
  local out=$1; shift  # full check's phases last seconds, where a repeat changes little)
  timeout "$(left 360)" "$VPY" -m scanbridge.entrypoints.cli dev bench "$SLIDE" --model "$MODEL" --device "$DEVICE" --json \
    --no-naive --repeat 1 --truth "$TRUTH" --trt-cache "$WORK/tensorrt" "$@" > "$out"
}
say "bench: $MODEL on $DEVICE"
run_bench "$WORK/bench.json"
rc=$?
(( rc == 3 )) && die 3 "the bench could not use CUDA (see above)"
(( rc == 0 )) || die 4 "the bench failed or timed out (exit $rc)"

TRT_NOTE=""
rm -f "$WORK/bench-trt.json"
if (( ! SMALL )) && [[ "${GPU_CHECK_TENSORRT:-1}" != 0 ]]; then
  if "$VPY" -c "import onnxruntime as o, ctypes, sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers() or not ctypes.CDLL('libnvinfer.so.10'))" 2>/dev/null; then
    if (( $(date +%s) - START < 240 )); then
      say "bench: $MODEL on TensorRT (FP16; engines built once into $WORK/tensorrt)"
      run_bench "$WORK/bench-trt.json" --tensorrt || { TRT_NOTE="the TensorRT run failed or timed out"; rm -f "$WORK/bench-trt.json"; }
    else
      TRT_NOTE="skipped: not enough of the 8-minute budget left"
    fi
  else
    TRT_NOTE="unavailable: onnxruntime has no TensorrtExecutionProvider or libnvinfer.so.10 does not load"
  fi
fi

# ---------------------------------------------------------------- one JSON object
"$VPY" - "$WORK/bench.json" "$WORK/bench-trt.json" "$TRT_NOTE" "$GEN_S" "$START" "$SMALL" <<'EOF'
import json, os, shutil, subprocess, sys, time

main_path, trt_path, trt_note, gen_s, start, small = sys.argv[1:]
keys = ("provider", "device", "batch_size", "readers", "tiles_processed", "tiles_total", "tiles_per_s",
        "pipeline_s", "pipeline_vs_bare", "bare_tiles_per_s", "bare_onnxruntime_s", "model_only_s",
        "decode_only_s", "io_binding", "peak_rss_mb")


def pick(report):
    return {k: report.get(k) for k in keys}


main = json.loads(open(main_path).read().strip().splitlines()[-1])
trt = json.loads(open(trt_path).read().strip().splitlines()[-1]) if os.path.exists(trt_path) else None
gpu = None
if shutil.which("nvidia-smi"):
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True)
    gpu = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
best = trt if trt and trt["pipeline_s"] < main["pipeline_s"] else main
out = {
    "check": "small (CPU)" if small == "1" else "40x slide (GPU)",
    "gpu": gpu,
    "model": main["model"],
    **pick(main),
    "slide": {"width": main["width"], "height": main["height"], "megapixels": main["megapixels"],
              "tissue_fraction": main.get("tissue_fraction"), "generated_s": int(gen_s)},
    "tensorrt": pick(trt) if trt else trt_note or None,
    "targets": None if small == "1" else {
        "slide_le_60_s": best["pipeline_s"] <= 60.0,
        "pipeline_vs_bare_ge_0_80": best["pipeline_vs_bare"] >= 0.80,
    },
    "total_s": round(time.time() - int(start), 1),
}
print(json.dumps(out))
EOF
