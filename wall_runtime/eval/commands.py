"""``wall-runtime eval``."""

from __future__ import annotations

from pathlib import Path

import typer


def _seeds(spec: str) -> list[int]:
    """``0-49`` or ``0,3,7`` or ``0-9,20``."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise typer.BadParameter(f"--seeds {spec!r}: expected e.g. 0-49 or 0,3,7") from None
    if not out:
        raise typer.BadParameter("--seeds: no seed given")
    return out


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        robot: Path = typer.Option(
            Path("robots/aloha_transfer_cube/robot.yaml"),
            help="a simulated task robot (reward, privileged state)",
        ),
        seeds: str = typer.Option("0-9", help="episode seeds, e.g. 0-49"),
        smoother: list[str] = typer.Option(
            ["crossfade"], help="none | crossfade | ensemble | rtc (repeatable)"
        ),
        extra_latency: list[float] = typer.Option(
            [0.0], "--extra-latency-ms", help="injected latency (repeatable)"
        ),
        horizon: list[int] = typer.Option(
            [], "--execute-horizon", help="actions run per chunk (repeatable; default auto)"
        ),
        steps: list[int] = typer.Option(
            [], "--steps", help="a model's denoise steps (repeatable; a server each)"
        ),
        latency: str = typer.Option(
            "0", "--latency-ms", help="simulated clock: inference latency applied, or 'measured'"
        ),
        clock: str = typer.Option("simulated", help="simulated | real"),
        backend: str = typer.Option("expert", help="expert | torch | onnxruntime | tensorrt"),
        checkpoint: Path | None = typer.Option(
            None, help="checkpoint (default for a model backend: the robot's random-weight tiny one)"
        ),
        variant: str = typer.Option(
            "flow", help="the expert's layout / the tiny checkpoint's generation: flow | 0.5"
        ),
        option: list[str] = typer.Option(
            [], "--option", "-o", help="backend option KEY=VALUE (e.g. num_steps=4)"
        ),
        server: str | None = typer.Option(None, help="a running policy server instead of starting one"),
        direct: bool = typer.Option(True, help="also run the expert directly in the environment"),
        video: str = typer.Option("failures", help="failures | all | none"),
        out: Path = typer.Option(Path("runs/eval"), help="report folder"),
        record: Path | None = typer.Option(
            None,
            help="append every episode to this LeRobot v3 dataset (images rendered each tick; the "
            "episode's instruction as its task; success in wall_runtime/episode_NNNNNN.json)",
        ),
        time_limit: float | None = typer.Option(
            None, "--time-limit-s", help="an episode's time limit (default: the task's, robot.yaml)"
        ),
        after_success: float = typer.Option(
            0.0,
            "--after-success-s",
            help="run each episode on this long after success (e.g. 1.0 with --record: demos that end holding the cube)",
        ),
    ) -> None:
        """Closed-loop episodes of a simulated task through the whole runtime (server process, ZeroMQ,
        scheduler, smoother, EE edge + IK, safety, adapter): success, time, interventions, seams."""
        from wall_runtime.eval.sweep import EvalOptions, markdown_table, run_eval
        from wall_runtime.transport.commands import _parse_options

        if clock not in ("simulated", "real"):
            raise typer.BadParameter(f"--clock {clock!r}: choose simulated or real")
        if video not in ("failures", "all", "none"):
            raise typer.BadParameter(f"--video {video!r}: choose failures, all or none")
        if after_success < 0:
            raise typer.BadParameter(f"--after-success-s {after_success}: expected >= 0")
        if variant not in ("flow", "0.5"):
            raise typer.BadParameter(f"--variant {variant!r}: choose flow or 0.5")
        lat: float | None
        if latency == "measured":
            lat = None
        else:
            try:
                lat = float(latency)
            except ValueError:
                raise typer.BadParameter(f"--latency-ms {latency!r}: a number or 'measured'") from None
        backend_options = _parse_options(option)
        if backend in ("torch", "onnxruntime"):
            # a model samples its initial noise: one seeded generator per server, so the same command
            # gives the same episodes on the simulated clock (``-o seed=N`` picks another sequence)
            backend_options.setdefault("seed", 0)
        if (
            backend == "expert" or checkpoint is None
        ):  # the expert's layout / the tiny checkpoint's generation
            backend_options.setdefault("variant", variant)
        opts = EvalOptions(
            robot=robot,
            seeds=_seeds(seeds),
            smoothers=list(smoother),
            latencies_ms=list(extra_latency),
            horizons=list(horizon) or [None],
            steps=list(steps) or [None],
            latency_ms=lat,
            clock=clock,
            backend=backend,
            checkpoint=checkpoint,
            backend_options=backend_options,
            server=server,
            direct=direct and clock == "simulated",
            video=video,
            out=out,
            record=record,
            after_success_s=after_success,
            time_limit_s=time_limit,
        )
        record = run_eval(opts, progress=lambda m: typer.echo(m, err=True))
        typer.echo(markdown_table(record))
        typer.echo(f"report: {out}")
