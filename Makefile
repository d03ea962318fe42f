# The two Quick start commands: `make demo` and `make test`. Both set up a fresh machine first.
.PHONY: setup demo test lint bench

export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/wall-runtime demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
