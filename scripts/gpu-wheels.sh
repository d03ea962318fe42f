#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the few wheels a GPU machine without a package registry
# lacks, for its Python 3.12 on x86-64 Linux, into .whl/ (ignored by git; it travels with a call to
# the GPU machine and scripts/gpu-check.sh installs what it finds there).
#
# The GPU image brings its own CUDA torch and most of the project's dependencies (numpy, safetensors,
# tokenizers, pillow, msgpack, typer, rich, pyyaml, onnx, onnxruntime, opencv, matplotlib, pytest,
# transformers). It has no pyzmq: the model, export, verify and benchmark paths do not need it (the
# transport imports zmq lazily), but the transport tests and `wall-runtime serve` do.
#
#   scripts/gpu-wheels.sh            # default set
#   scripts/gpu-wheels.sh NAME==VER  # other / more wheels
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LIMIT_MIB=64
WHEELS=("$@")
if [ ${#WHEELS[@]} -eq 0 ]; then
  WHEELS=("pyzmq==27.1.0")
fi

mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${WHEELS[@]}"

size_kib=$(du -sk .whl | cut -f1)
echo "wheels in .whl/ ($((size_kib / 1024)) MiB of the ${LIMIT_MIB} MiB a call may carry):"
ls -1 .whl
if [ "$size_kib" -gt $((LIMIT_MIB * 1024 - 8 * 1024)) ]; then
  echo "error: .whl/ is too large to travel with the working tree (keep it well under ${LIMIT_MIB} MiB)" >&2
  exit 1
fi
