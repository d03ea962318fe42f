"""``wall-runtime demo`` and ``wall-runtime replay``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _metrics_address(value: str | None) -> tuple[str, int] | None:
    from wall_runtime.e2e.robot_metrics import parse_host_port

    try:
        return None if value is None else parse_host_port(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


DISPLAY_HELP = "live view in the rerun viewer: cameras, joints, chunks, EE targets, interventions"
DISPLAY_SAVE_HELP = "write the live view to this .rrd file (open it with: rerun FILE.rrd)"


def register(app: typer.Typer) -> None:
    from wall_runtime.backends.options import options_epilog

    @app.command("demo", epilog=options_epilog())
    def demo(
        robot: str = typer.Option(
            "pick_cube_task",
            help="robot name (./robots/NAME or a shipped robot), folder or robot.yaml; a task robot "
            "runs episodes of its task, another (e.g. sim_arm) runs free for --duration",
        ),
        checkpoint: str | None = typer.Option(
            None,
            help="checkpoint folder, or 'random' (default: the trained checkpoints/pick_cube on the "
            "pick task; a tiny random-weight one shaped for any other robot)",
        ),
        random_weights: bool = typer.Option(
            False,
            "--random-weights",
            help="the random-weight tiny checkpoint of the same layout (the baseline) instead of the trained one",
        ),
        seeds: str = typer.Option(
            "100000-100002", help="task robot: the episodes' seeds (held-out: 100000+), e.g. 100000-100009"
        ),
        time_limit: float | None = typer.Option(
            None, "--time-limit-s", help="task robot: an episode's time limit (default: the task's)"
        ),
        after_success: float = typer.Option(
            1.0, "--after-success-s", help="task robot: run on this long after success (holding the cube)"
        ),
        clock: str = typer.Option(
            "real",
            help="task robot: real (the live view in real time) | simulated (the physics steps with the "
            "loop, the measured inference latency applied: the outcome does not depend on the machine's load)",
        ),
        variant: str = typer.Option("flow", help="tiny checkpoint generation: flow | 0.5"),
        backend: str = typer.Option(
            "torch",
            help="torch | onnxruntime | tensorrt | expert (task robot: its scripted expert, the reference)",
        ),
        option: list[str] = typer.Option(
            [], "--option", "-o", help="backend option KEY=VALUE (repeatable; the keys are listed below)"
        ),
        server: str | None = typer.Option(None, help="use a running policy server instead of starting one"),
        duration: float = typer.Option(20.0, help="robot without a task: seconds to run (0: until Ctrl-C)"),
        instruction: str = typer.Option(
            "pick up the red cube and place it in the bowl",
            "--instruction",
            "-i",
            help="robot without a task: the instruction sent (a task names its own per episode)",
        ),
        smoother: str = typer.Option("crossfade", help="none | crossfade | ensemble | rtc"),
        report: Path | None = typer.Option(None, help="report folder (default: ./runs/demo-<time>)"),
        live: bool = typer.Option(True, help="live status table in the terminal"),
        metrics_http: str | None = typer.Option(
            None,
            help="robot without a task: serve the robot side's Prometheus metrics on HOST:PORT (/metrics)",
        ),
        display: bool = typer.Option(False, "--display", help=DISPLAY_HELP),
        display_save: Path | None = typer.Option(None, "--display-save", help=DISPLAY_SAVE_HELP),
    ) -> None:
        """The whole runtime, closed loop: policy server process, ZeroMQ, scheduler, smoother, EE edge
        + IK, safety, simulated robot. By default the trained policy does the pick task on held-out
        seeds and prints its success."""
        from wall_runtime.e2e.demo import DemoOptions, run_demo
        from wall_runtime.e2e.robot_side import load_robot_side
        from wall_runtime.e2e.task_demo import CheckpointMissingError, TaskDemoOptions, task_part
        from wall_runtime.eval.commands import _seeds
        from wall_runtime.robot_files import RobotNotFoundError, resolve_robot

        if variant not in ("flow", "0.5"):
            raise typer.BadParameter(f"--variant {variant!r}: choose flow or 0.5")
        if checkpoint == "random":
            random_weights, checkpoint = True, None
        if random_weights and checkpoint is not None:
            raise typer.BadParameter("--random-weights and --checkpoint: give one of them")
        if clock not in ("real", "simulated"):
            raise typer.BadParameter(f"--clock {clock!r}: choose real or simulated")
        if after_success < 0:
            raise typer.BadParameter(f"--after-success-s {after_success}: expected >= 0")
        seed_list = _seeds(seeds)
        extra = _options(option)
        from wall_runtime.backends.options import BackendOptionError, parse_options

        try:  # checked here, before a server process starts and fails on it
            parse_options(backend, extra)
        except BackendOptionError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--option' / '-o'") from None
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and not (ckpt / "config.json").is_file():
            raise typer.BadParameter(
                f"{ckpt}: not a checkpoint folder (no config.json)", param_hint="'--checkpoint'"
            )
        from wall_runtime.recording.rerun_view import DisplayError, require_rerun

        try:
            if display or display_save is not None:  # before a server process starts
                require_rerun()
            side = load_robot_side(resolve_robot(robot))
        except DisplayError as exc:
            console.print(f"[red]cannot run the demo:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        except (RobotNotFoundError, OSError, ValueError) as exc:
            console.print(f"[red]cannot run the demo:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        if backend == "expert" and task_part(side) is None:
            raise typer.BadParameter(
                f"{robot}: the expert backend needs a task robot (e.g. pick_cube_task)",
                param_hint="'--backend'",
            )
        if task_part(side) is not None:
            from wall_runtime.e2e.task_demo import run_task_demo

            if metrics_http is not None:
                raise typer.BadParameter(
                    "the robot side's metrics are served by the free-running demo (--robot sim_arm) and run",
                    param_hint="'--metrics-http'",
                )

            task_opts = TaskDemoOptions(
                checkpoint=ckpt,
                random_weights=random_weights,
                variant=variant,
                backend=backend,
                backend_options=extra,
                server=server,
                seeds=seed_list,
                time_limit_s=time_limit,
                after_success_s=after_success,
                smoother=smoother,
                clock=clock,
                report=report,
                live=live,
                display=display,
                display_save=display_save,
            )
            try:
                result = run_task_demo(task_opts, side, console)
            except CheckpointMissingError as exc:
                console.print(f"[red]cannot run the demo:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
            except DisplayError as exc:
                console.print(f"[red]cannot run the demo:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
            n, ok = len(result["episodes"]), result["successes"]
            console.print(f"success {ok}/{n}; report {result['report']}")
            if sum(e["chunks_received"] for e in result["episodes"]) == 0:
                console.print("[red]no chunk reached the robot[/]")
                raise typer.Exit(1)
            return
        opts = DemoOptions(
            robot=robot,
            checkpoint=ckpt,
            variant=variant,
            backend=backend,
            server=server,
            duration=None if duration <= 0 else duration,
            instruction=instruction,
            smoother=smoother,
            report=report,
            live=live,
            metrics_http=_metrics_address(metrics_http),
            display=display,
            display_save=display_save,
        )
        if extra:
            opts.backend_options = {**opts.backend_options, **extra}
        if ckpt is not None:
            opts.backend_options.pop("noise_knots", None)  # a real checkpoint samples as the reference does
        try:
            summary = run_demo(opts, console, side=side)
        except DisplayError as exc:
            console.print(f"[red]cannot run the demo:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        counters = summary["counters"]
        console.print(
            f"chunks received {counters['chunks_received']} / requested {counters['requests']}; "
            f"interventions {sum(summary['interventions'].values())}; report {summary['report']}"
        )
        if counters["chunks_received"] == 0:
            console.print("[red]no chunk reached the robot[/]")
            raise typer.Exit(1)

    @app.command("replay")
    def replay(
        episode: Path = typer.Argument(
            ..., help="a recorded dataset (a report's dataset/) or a legacy npz folder"
        ),
        index: int | None = typer.Option(
            None, "--episode", help="which episode of the dataset (default: the last)"
        ),
        robot: Path | None = typer.Option(None, help="robot.yaml, if not the one the recording names"),
        drive: bool = typer.Option(
            False, help="drive the robot (its adapter) with the recorded chunks in real time"
        ),
        json_out: Path | None = typer.Option(None, "--json", help="write the result here"),
        display: bool = typer.Option(False, "--display", help=DISPLAY_HELP),
        display_save: Path | None = typer.Option(None, "--display-save", help=DISPLAY_SAVE_HELP),
    ) -> None:
        """Play a recording back through the same scheduler, smoother and safety chain, without a model.

        By default a dry run on the recorded clock and measurements: it must reproduce the recorded
        commands exactly. With --drive, the recorded chunks drive the robot (e.g. the simulator)."""
        from wall_runtime.e2e.recording import Episode
        from wall_runtime.e2e.replay import replay_dry
        from wall_runtime.recording.rerun_view import DisplayError, DisplayOptions

        view = DisplayOptions(show=display, save=display_save)

        try:
            ep = Episode.load(episode, index)
        except (OSError, ValueError, KeyError) as exc:  # not a recording, no such episode, malformed
            console.print(f"[red]cannot replay:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        if not drive:
            try:
                result = replay_dry(ep, robot, display=view)
            except (OSError, ValueError, DisplayError) as exc:  # robot.yaml gone, chunks not in joints
                console.print(f"[red]cannot replay:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
            record = {
                "ticks": result.ticks,
                "chunks": result.chunks,
                "max_abs_diff": result.max_abs_diff,
                "nan_mismatches": result.nan_mismatches,
                "identical": result.identical,
            }
            console.print(
                f"replayed {result.ticks} ticks, {result.chunks} chunks: "
                + (
                    "[green]identical commands[/]"
                    if result.identical
                    else f"[red]differs by {result.max_abs_diff:.3g}[/]"
                )
            )
            if json_out:
                json_out.write_text(json.dumps(record, indent=2))
            if not result.identical:
                raise typer.Exit(1)
            return
        from wall_runtime.e2e.replay import drive_with_recording

        try:
            summary = drive_with_recording(ep, robot, display=view)
        except (OSError, ValueError, DisplayError) as exc:
            console.print(f"[red]cannot replay:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        console.print(
            f"drove {summary['robot']} for {summary['counters']['ticks']} ticks; "
            f"interventions {sum(summary['interventions'].values())}"
        )
        if json_out:
            json_out.write_text(json.dumps(summary, indent=2, default=str))

    @app.command("convert-recording")
    def convert_recording(
        episode: Path = typer.Argument(..., help="a legacy npz recording folder (meta.json, ticks.npz, ...)"),
        dataset: Path = typer.Argument(..., help="the LeRobot v3 dataset folder to add it to (made if new)"),
    ) -> None:
        """Turn a legacy npz episode recording into an episode of a LeRobot v3 dataset."""
        from wall_runtime.recording.convert import convert_npz_episode

        try:
            index = convert_npz_episode(episode, dataset)
        except (OSError, ValueError, KeyError) as exc:
            console.print(f"[red]cannot convert:[/] {exc}")
            raise typer.Exit(2) from None
        console.print(f"{episode} -> {dataset} (episode {index})")

    @app.command("bench")
    def bench(
        backend: list[str] = typer.Option(["torch", "onnxruntime"], help="backends to sweep (repeatable)"),
        steps: list[int] = typer.Option([1, 2, 4, 10], help="denoise steps to sweep (repeatable)"),
        views: list[int] = typer.Option([1, 2, 3], help="camera views to sweep: 1, 2 or 3 (repeatable)"),
        seconds: float = typer.Option(8.0, help="closed-loop seconds per configuration"),
        clock: str = typer.Option(
            "real",
            help="task robot: real (the live view in real time) | simulated (the physics steps with the "
            "loop, the measured inference latency applied: the outcome does not depend on the machine's load)",
        ),
        variant: str = typer.Option("flow", help="tiny checkpoint generation: flow | 0.5"),
        out: Path | None = typer.Option(
            None, help="folder for JSON, Markdown table and plot (default: ./runs/bench-<time>)"
        ),
        smoke: bool = typer.Option(
            False,
            "--smoke",
            help="check the benchmark runs: torch, 1 step, 1 view, 3 s (sweep options ignored)",
        ),
    ) -> None:
        """End-to-end latency, stage by stage (capture → actuation), sweeping backends, steps and views."""
        from wall_runtime.e2e.bench import VIEW_ROBOTS, markdown_table, run_bench
        from wall_runtime.e2e.demo import default_report_dir

        out = out or default_report_dir("bench")

        if smoke:
            backend, steps, views, seconds = ["torch"], [1], [1], 3.0
        bad = [v for v in views if v not in VIEW_ROBOTS]
        if bad:
            raise typer.BadParameter(f"--views {bad}: choose among {sorted(VIEW_ROBOTS)}")
        record = run_bench(list(backend), list(steps), list(views), seconds, out, variant)
        console.print(markdown_table(record["results"]))
