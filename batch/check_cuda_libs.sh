#!/bin/sh
# Run inside the worker image (batch/Dockerfile does, at build time): every shared library that
# onnxruntime-gpu's CUDA provider links must resolve in the image, except libcuda.so.1, which the
# NVIDIA container runtime mounts from the host driver; and cuDNN ${CUDNN_MAJOR} must be there
# (the provider loads it). Exit 1 with the missing names otherwise.
set -eu
CUDNN_MAJOR="${CUDNN_MAJOR:-9}"
capi=$(python3 -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi")')
lib="$capi/libonnxruntime_providers_cuda.so"
if [ ! -f "$lib" ]; then
  echo "check_cuda_libs: $lib is missing: onnxruntime-gpu is not installed" >&2
  exit 1
fi
missing=$(ldd "$lib" | grep 'not found' | grep -v 'libcuda\.so\.1' || true)
if [ -n "$missing" ]; then
  echo "check_cuda_libs: the CUDA provider links libraries this image lacks:" >&2
  echo "$missing" >&2
  exit 1
fi
if ! ldconfig -p | grep -q "libcudnn\.so\.${CUDNN_MAJOR} "; then
  echo "check_cuda_libs: cuDNN ${CUDNN_MAJOR} (libcudnn.so.${CUDNN_MAJOR}) is not in the image" >&2
  exit 1
fi
echo "check_cuda_libs: every library of $(basename "$lib") resolves (cuDNN ${CUDNN_MAJOR} present)"
