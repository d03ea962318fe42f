"""Every command the README, docs/ and the Dockerfile show is exercised.

- ``wall-runtime`` lines in code blocks (and the arguments after the image in ``docker run`` lines)
  are parsed strictly by the real command: the command exists, every option exists, required ones
  are there, values convert, ``-o KEY=VALUE`` keys are options of the named backend;
- ``wall-runtime`` spans in running text and tables (overviews with placeholders such as ``DIR``
  and alternatives ``a|b``) name existing commands and options;
- ``docker run -p`` lines bind the server off loopback inside the container, with CURVE keys;
- README's ``predict`` walk-through runs as written; ``python benchmarks/X.py`` scripts answer
  ``--help``; ``make`` targets exist.
Commands that run for real elsewhere: ``demo`` and ``check-robot`` from an installed wheel
(test_packaging), ``serve`` (test_transport_cli, test_openpi_ws), ``run`` (test_e2e_run),
``cameras snapshot`` (test_cameras_snapshot_sim), ``metrics`` (test_transport_cli).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from wall_runtime.backends.options import parse_options
from wall_runtime.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROOT_COMMAND = typer.main.get_command(app)


def _code_blocks(text: str) -> list[str]:
    """Shell lines from fenced code blocks (no language, bash, sh, console), continuations joined."""
    lines: list[str] = []
    block: list[str] | None = None
    shell = False
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, shell = [], line[3:].strip() in ("", "bash", "sh", "console", "shell")
            else:
                if shell:
                    joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
                    lines += [one.strip() for one in joined.splitlines() if one.strip()]
                block = None
            continue
        if block is not None:
            block.append(line)
    return lines


def _dockerfile_lines() -> list[str]:
    """The run lines in the Dockerfile's header comment."""
    comment = "\n".join(
        line[1:].strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("#")
    )
    joined = re.sub(r"\\\n\s*", " ", comment)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith(("docker ", "mkdir "))]


def _wall_runtime_args(line: str) -> list[str] | None:
    """The arguments of the ``wall-runtime`` invocation on a shell line (or after the image in a
    ``docker run`` line); None if the line runs none."""
    line = line.split(" #", 1)[0]  # a trailing comment
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    if tokens[:1] == ["docker"] and tokens[1:2] != ["run"]:
        return None  # docker build: the tag is no command
    for i, token in enumerate(tokens):
        if token == "wall-runtime" or token.endswith("/wall-runtime") or token.startswith("wall-runtime:"):
            if tokens[0] == "docker" and not token.startswith("wall-runtime:"):
                continue  # a volume or tag name inside a docker line, not the image
            return tokens[i + 1 :]
    return None


def _leaf(args: list[str]) -> tuple[list[str], object, list[str]]:
    """(command path, the click command, its own arguments)."""
    command, path = ROOT_COMMAND, []
    rest = list(args)
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    return path, command, rest


STRICT: list[tuple[str, list[str]]] = []
for doc in DOCS:
    for line in _code_blocks(doc.read_text()):
        args = _wall_runtime_args(line)
        if args is not None:
            STRICT.append((f"{doc.name}: {line}", args))
for line in _dockerfile_lines():
    args = _wall_runtime_args(line)
    if args is not None:
        STRICT.append((f"Dockerfile: {line}", args))

LENIENT: list[tuple[str, str]] = []
for doc in [*DOCS]:
    for span in re.findall(r"`((?:\.venv/bin/)?wall-runtime [^`]+)`", doc.read_text()):
        LENIENT.append((f"{doc.name}: {span}", span))


def test_the_docs_show_commands() -> None:
    assert len(STRICT) >= 12 and len(LENIENT) >= 20
    assert any("Dockerfile" in where and "serve" in args for where, args in STRICT)


@pytest.mark.parametrize(("where", "args"), STRICT, ids=[w[:90] for w, _ in STRICT])
def test_documented_command_lines_parse(where: str, args: list[str]) -> None:
    path, command, rest = _leaf(args)
    assert path, f"{where}: no such command"
    ctx = command.make_context(" ".join(["wall-runtime", *path]), list(rest))  # raises on any mistake
    if ctx.params.get("option"):
        backend = ctx.params.get("backend") or "torch"
        values = dict(o.partition("=")[::2] for o in ctx.params["option"])
        parse_options(backend, values)  # -o keys and values are the backend's


def _alternatives(span: str) -> list[str]:
    """An overview span as concrete tokens: ``a\\|b`` / ``a|b`` → a, ``[--x]`` → --x."""
    span = span.replace("\\|", "|").replace("[", "").replace("]", "")
    tokens = []
    for token in span.split():
        tokens.append(token.split("|")[0] if "|" in token and not token.startswith("tcp") else token)
    return tokens


@pytest.mark.parametrize(("where", "span"), LENIENT, ids=[w[:90] for w, _ in LENIENT])
def test_documented_spans_name_real_commands_and_options(where: str, span: str) -> None:
    tokens = _alternatives(span)[1:]
    if not tokens or tokens[0] in ("...", "--help"):
        return
    path, command, rest = _leaf(tokens)
    assert path, f"{where}: no such command {tokens[0]!r}"
    names = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for token in rest:
        if token.startswith("-") and token != "-":
            assert token.split("=", 1)[0] in names, f"{where}: `{' '.join(path)}` has no option {token}"


def test_docker_serve_lines_are_reachable_through_the_published_port() -> None:
    """Inside a container a loopback bind reaches nothing through ``-p``: the documented server binds
    0.0.0.0, and with CURVE keys (a non-loopback bind without them is refused)."""
    lines = [
        (where, args)
        for where, args in STRICT
        if where.split(":")[0] in ("Dockerfile", "export.md") and "-p " in where
    ]
    assert lines
    for where, args in lines:
        path, command, rest = _leaf(args)
        params = command.make_context("wall-runtime serve", list(rest)).params
        assert path == ["serve"], where
        assert params["bind"].startswith("tcp://0.0.0.0:"), where
        assert params["server_key"] is not None and params["allow"] is not None, where


def test_readme_predict_walkthrough_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## `predict` files") :]
    block = _code_blocks(section[: section.index("## ", 5)])
    assert any(line.startswith("wall-runtime predict") for line in block)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for line in block:
        tokens = shlex.split(line)
        if tokens[0] == "wall-runtime":
            tokens = [sys.executable, "-m", "wall_runtime", *tokens[1:]]
        elif tokens[0] == "python":
            tokens = [sys.executable, *tokens[1:]]
        done = subprocess.run(tokens, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    import numpy as np

    with np.load(tmp_path / "result.npz") as result:
        assert result["actions"].ndim == 2 and np.isfinite(result["actions"]).all()


BENCHMARKS = sorted(set(re.findall(r"python (benchmarks/\w+\.py)", (ROOT / "README.md").read_text())))


@pytest.mark.parametrize("script", BENCHMARKS)
def test_documented_benchmark_scripts_answer_help(script: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stdout + done.stderr


def test_documented_make_targets_exist() -> None:
    targets = set(re.findall(r"^make (\w+)", (ROOT / "README.md").read_text(), flags=re.M))
    assert targets
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target!r}"
