# wall-runtime GPU image: CUDA + TensorRT + the runtime with its GPU and sim extras and the shipped
# robots; `wall-runtime` is the entry point (serve, demo, bench, export, verify, ...).
#
# Build (from the repository root):
#   docker build -t wall-runtime:gpu .
# The closed-loop demo: the trained pick-cube policy on its task (reports land in the mounted ./runs):
#   docker run --rm -v $PWD/runs:/data/runs wall-runtime:gpu demo --no-live
# The policy server on a GPU, reachable through -p: inside a container it must bind 0.0.0.0 (a
# loopback bind is not reachable from outside the container), and a non-loopback bind wants CURVE
# keys (or --insecure on a trusted network). Keys, once:
#   docker run --rm -v $PWD/keys:/keys wall-runtime:gpu keys generate /keys -n server -n robot1
#   mkdir -p keys/allowed && cp keys/robot1.key keys/allowed/
# then, with the checkpoint read-only and the engine cache as a volume (engines are built on the
# first start for this GPU and reused afterwards; see docs/export.md):
#   docker run --rm --gpus all --ipc=host -p 5555-5556:5555-5556 \
#     -v /path/to/wall-oss-0.5:/models/wall-oss-0.5:ro \
#     -v wall-runtime-cache:/cache -v $PWD/keys:/keys:ro \
#     wall-runtime:gpu serve --checkpoint /models/wall-oss-0.5 --backend tensorrt --bind tcp://0.0.0.0:5555 \
#       --session-port 5556 \
#       --server-key /keys/server.key_secret --allow /keys/allowed \
#       -o precision=bf16 -o cameras=face_view=640x480,left_wrist_view=640x480,right_wrist_view=640x480
# Build the engines ahead of time (same image, same cache volume), then check them against torch:
#   docker run --rm --gpus all -v /path/to/ckpt:/ckpt:ro -v wall-runtime-cache:/cache \
#     wall-runtime:gpu export --checkpoint /ckpt --backend tensorrt --steps 10
#   docker run --rm --gpus all -v /path/to/ckpt:/ckpt:ro -v wall-runtime-cache:/cache \
#     wall-runtime:gpu verify --checkpoint /ckpt --backend tensorrt
# End-to-end latency on this GPU (results in the mounted ./runs):
#   docker run --rm --gpus all -v $PWD/runs:/data/runs wall-runtime:gpu bench --seconds 8
#
# The base image brings CUDA, cuDNN, TensorRT (C++ libraries and its Python package) and Python 3.
# Pick a tag whose CUDA matches the torch wheel index below (TensorRT 10.x, CUDA 12.8 here).
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.03-py3
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC=torch

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WALL_RUNTIME_CACHE=/cache \
    MUJOCO_GL=osmesa \
    PYOPENGL_PLATFORM=osmesa

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libusb-1.0-0 libgl1 libegl1 libosmesa6 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/wall-runtime

# torch from the CUDA wheel index first, in its own layer: it is the largest and changes least
RUN python3 -m pip install --index-url ${TORCH_INDEX} "${TORCH_SPEC}"

# dependencies before the sources, so editing code does not reinstall them
COPY pyproject.toml setup.py README.md ./
COPY wall_runtime/__init__.py wall_runtime/__init__.py
RUN mkdir robots && python3 -m pip install ".[gpu,sim]" \
 # the CPU onnxruntime wheel (a base dependency) and onnxruntime-gpu install the same module;
 # keep only the GPU build, which has the CUDA and TensorRT execution providers
 && python3 -m pip uninstall -y onnxruntime \
 && python3 -m pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.18"

COPY wall_runtime ./wall_runtime
COPY robots ./robots
# the trained pick-cube demo policy ships as package data (wall_runtime.checkpoints)
COPY checkpoints ./checkpoints
RUN python3 -m pip install --no-deps . \
 && python3 -c "import tensorrt, onnxruntime, torch; print('TensorRT', tensorrt.__version__, '| ORT', onnxruntime.__version__, onnxruntime.get_available_providers(), '| torch', torch.__version__)"

# engines, ONNX graphs, timing cache and checkpoint hashes live here; mount a volume to keep them
VOLUME ["/cache"]
# 5555: the public endpoint (hellos); 5556: the session endpoint robots attach to (serve --session-port 5556)
EXPOSE 5555 5556
# demo and bench write their reports under ./runs of the working directory
WORKDIR /data

ENTRYPOINT ["wall-runtime"]
CMD ["--help"]
