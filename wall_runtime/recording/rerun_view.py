"""The live ``--display`` view: a control loop subscriber that logs to `rerun <https://rerun.io>`_.

What it shows, on two timelines (``tick``, the loop's tick counter, and ``time``, seconds on the
loop's clock since the first tick):

- ``cameras/<view>``: the images sent to the policy, as JPEG (the observation, not every frame);
- ``joints/<name>``: commanded (after safety), measured and scheduler target, one plot per joint
  in the robot's units;
- ``world/ee_target``: where the end effector(s) would go along each chunk's waypoints (the model
  edge's output through the robot's forward kinematics), and ``world/ee_measured`` /
  ``world/ee_commanded`` each tick, where the robot has kinematics;
- ``chunks/seq`` (a step per chunk boundary), ``chunks/latency_ms`` and an ``events`` log with one
  line per chunk, per status change (hold, e-stop) and per tick with safety interventions;
- ``safety/interventions``: how many filters changed the tick's command.

The loop calls the subscriber from its own thread (see :mod:`.subscriber`), so every call only
puts the data on a bounded queue; a worker thread converts and logs it. When the queue is full
(a viewer that cannot keep up), events are dropped and counted, the loop never waits. rerun is
imported here only: nothing imports this module unless ``--display`` / ``--display-save`` is used.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.recording.subscriber import TickRecord
from wall_runtime.robot import RobotSpec
from wall_runtime.types import ActionChunk, Observation

log = logging.getLogger(__name__)

SERIES = ("commanded", "measured", "target")
_COLORS = ([31, 119, 180], [255, 127, 14], [150, 150, 150])  # as the --plot figure
_STOP = object()
VIEW_PORT = 9876  # rerun's own default: a viewer connects there unless told otherwise


class DisplayError(RuntimeError):
    """The live view cannot be opened (rerun-sdk missing, the .rrd file not writable)."""


@dataclass(frozen=True)
class DisplayOptions:
    """``--display`` / ``--display-save`` as given on the command line."""

    show: bool = False  # spawn a viewer (or, with no display, serve one over gRPC)
    save: Path | None = None  # also write everything to this .rrd file

    @property
    def wanted(self) -> bool:
        return self.show or self.save is not None


def _check_port_free(port: int) -> None:
    """rerun's gRPC server fails on its own thread when the port is taken: say so up front."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener still refuses it
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DisplayError(
                f"--display: port {port} is in use ({exc.strerror}); is another run serving a view?"
            ) from None


def has_display() -> bool:
    """Whether a viewer window can open here (a desktop session; not a headless box or CI)."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def require_rerun() -> Any:
    """The rerun module, or a :class:`DisplayError` saying how to install it (checked before a
    command connects anything)."""
    try:
        import rerun as rr
    except ImportError as exc:
        raise DisplayError(
            f"--display needs the rerun-sdk package (pip install 'wall-runtime[display]'): {exc}"
        ) from None
    return rr


class RerunView:
    """Logs what the loop does to a rerun recording stream (see the module docstring)."""

    def __init__(
        self,
        spec: RobotSpec,
        options: DisplayOptions,
        *,
        name: str = "wall-runtime",
        forward_kinematics: Callable[[np.ndarray], np.ndarray | None] | None = None,
        views: Sequence[str] = (),
        queue_size: int = 4096,
        lossless: bool = False,
        announce: Callable[[str], None] = log.info,
        camera_poses: Mapping[str, np.ndarray] | None = None,
        task: bool = False,
    ) -> None:
        """``task``: a task is run (``demo`` on a task robot): a panel shows what the policy was asked
        and the episode's state (:meth:`show_task`), and the safety chain's interventions are
        summarised (an event when the set of filters acting changes, a count per filter) instead of
        an event every tick. ``views``: the model views the cameras will send (laid out from the start; others are
        added when their first image comes). ``lossless``: the loop waits for room on the queue instead of dropping (a replay, which
        runs faster than real time and drives no robot). ``camera_poses``: model view -> 4x4 camera pose
        in the base frame (a fixed camera's hand-eye result), drawn in the 3D view."""
        rr = require_rerun()
        self._rr = rr
        self.spec = spec
        self.rec = rr.RecordingStream(application_id="wall-runtime", recording_id=None)
        self.rec.send_recording_name(name)
        self.viewer_url: str | None = None
        sinks: list[Any] = []
        if options.save is not None:
            try:
                options.save.parent.mkdir(parents=True, exist_ok=True)
                options.save.touch()
            except OSError as exc:
                raise DisplayError(f"--display-save {options.save}: {exc}") from None
            sinks.append(rr.FileSink(str(options.save)))
        if options.show:
            if has_display():
                # the viewer is its own process (it outlives this one); data goes to it over gRPC
                self.rec.spawn(connect=False)
                sinks.append(rr.GrpcSink())
                announce("display: rerun viewer spawned")
            else:
                # loopback only: camera images and joint data are not for the whole network
                _check_port_free(VIEW_PORT)
                server = rr.GrpcServerSink(bind_ip="127.0.0.1", port=VIEW_PORT)
                sinks.append(server)
                self.viewer_url = str(server.uri)
                announce(
                    "display: no screen here; a viewer elsewhere connects with "
                    f"`rerun {self.viewer_url}` (over an SSH tunnel to port {VIEW_PORT})"
                )
        self.rec.set_sinks(*sinks)
        self._fk = forward_kinematics
        if self._fk is not None and self._fk(np.zeros(spec.dof)) is None:
            self._fk = None  # the adapter answers None: no kinematics
        self._log_static()
        for view, pose in (camera_poses or {}).items():
            pose = np.asarray(pose, np.float64)
            self.rec.log(
                f"world/cameras/{view}",
                rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]),
                static=True,
            )
        self._views = tuple(sorted(set(views)))
        self._task = task
        self._acting: frozenset[str] = frozenset()
        self._filter_counts: dict[str, int] = {}
        self.rec.send_blueprint(self._blueprint())  # again once the camera views are known
        self.dropped = 0
        self._lossless = lossless
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._pending: list[tuple[str, Any]] = []
        self._t0: float | None = None
        self._status = "ok"
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="rerun-view", daemon=True)
        self._thread.start()

    # -- the loop's side: put and return ------------------------------------------------------

    def _put(self, item: Any) -> None:
        if self._lossless:
            self._queue.put(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def on_chunk(self, tick: int, chunk: ActionChunk) -> None:
        self._put(("chunk", tick, chunk))

    def on_request(self, tick: int, observation: Observation) -> None:
        self._put(("request", tick, dict(observation.images)))

    def show_task(self, markdown: str, event: str | None = None) -> None:
        """The task panel's text (instruction, episode, seed, time, outcome), logged with the next
        tick; ``event``: also a line in the event log (an episode's start or its outcome)."""
        self._put(("task", -1, (markdown, event)))

    def on_tick(self, record: TickRecord) -> None:
        # the loop may reuse its arrays: keep this tick's values
        self._put(
            (
                "tick",
                record.tick,
                replace(
                    record,
                    measured=record.measured.copy(),
                    target=record.target.copy(),
                    commanded=record.commanded.copy(),
                ),
            )
        )

    # -- the worker: convert and log ----------------------------------------------------------

    def _log_static(self) -> None:
        rr = self._rr
        for joint in self.spec.joints:
            self.rec.log(
                f"joints/{joint.name}",
                rr.SeriesLines(names=list(SERIES), colors=list(_COLORS), widths=[1.5, 1.0, 1.0]),
                static=True,
            )
        lines = [f"# {self.spec.name} at {self.spec.control_hz:g} Hz", ""]
        lines += [f"- {j.name}: {j.kind}, {j.unit}" for j in self.spec.joints]
        self.rec.log("robot", rr.TextDocument("\n".join(lines), media_type="text/markdown"), static=True)

    def _blueprint(self) -> Any:
        """The layout: cameras, the EE in 3D and the event log on the left; a plot per joint, the
        chunks and the interventions on the right."""
        rrb = self._rr.blueprint
        left: list[Any] = [rrb.Spatial2DView(origin=f"cameras/{v}", name=v) for v in self._views]
        if self._fk is not None:
            left.append(rrb.Spatial3DView(origin="world", name="end effector"))
        if self._task:
            left.insert(0, rrb.TextDocumentView(origin="task", name="task"))
        left.append(rrb.TextLogView(origin="events", name="events"))
        joints = [
            rrb.TimeSeriesView(origin=f"joints/{j.name}", name=f"{j.name} [{j.unit}]")
            for j in self.spec.joints
        ]
        right = rrb.Vertical(
            rrb.Grid(*joints),
            rrb.Horizontal(
                rrb.TimeSeriesView(origin="chunks", name="chunks"),
                rrb.TimeSeriesView(origin="safety", name="safety interventions"),
            ),
            row_shares=[4, 1],
        )
        return rrb.Blueprint(rrb.Horizontal(rrb.Vertical(*left), right, column_shares=[1, 2]))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._handle(item)
            except Exception as exc:  # the view must never take the run down: say it once per kind
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    self._last_error = message
                    log.warning("display: could not log %s: %s", item[0], message)

    def _handle(self, item: tuple[str, int, Any]) -> None:
        kind, tick, payload = item
        if kind == "task":  # now, with the last tick's time: an episode's outcome has no tick after it
            self._log_task(*payload)
            return
        if kind != "tick":
            # chunks and requests come before their tick's record: logged with its time
            self._pending.append((kind, payload))
            return
        record: TickRecord = payload
        if self._t0 is None:
            self._t0 = record.deadline
        self.rec.set_time("tick", sequence=tick)
        self.rec.set_time("time", duration=record.deadline - self._t0)
        pending, self._pending = self._pending, []
        for what, data in pending:
            if what == "chunk":
                self._log_chunk(data, record.deadline)
            else:
                self._log_images(data)
        self._log_tick(record)

    def _log_images(self, images: dict[str, np.ndarray]) -> None:
        rr = self._rr
        views = tuple(sorted(images))
        if views and not set(views) <= set(self._views):
            self._views = tuple(sorted({*self._views, *views}))
            self.rec.send_blueprint(self._blueprint())
        for view, image in images.items():
            img = rr.Image(np.ascontiguousarray(image), color_model="RGB")
            self.rec.log(f"cameras/{view}", img.compress(jpeg_quality=80))

    def _log_chunk(self, chunk: ActionChunk, now: float) -> None:
        rr = self._rr
        latency_ms = (now - chunk.stamp) * 1e3
        self.rec.log("chunks/seq", rr.Scalars(float(chunk.seq)))
        self.rec.log("chunks/latency_ms", rr.Scalars(latency_ms))
        self.rec.log(
            "events",
            rr.TextLog(
                f"chunk {chunk.seq}: {chunk.horizon} waypoints every {chunk.dt * 1e3:.0f} ms, "
                f"{latency_ms:.0f} ms after its observation",
                level="INFO",
            ),
        )
        if self._fk is None:
            return
        points = [self._fk(np.asarray(row, dtype=np.float64)) for row in chunk.actions]
        points = [p for p in points if p is not None]
        if points:
            path = np.stack(points, axis=1)  # [n_ee, H, 3]
            self.rec.log("world/ee_target", rr.LineStrips3D(list(path), colors=[[44, 160, 44]]))

    def _log_tick(self, record: TickRecord) -> None:
        rr = self._rr
        for j, joint in enumerate(self.spec.joints):
            values = [record.commanded[j], record.measured[j], record.target[j]]
            self.rec.log(f"joints/{joint.name}", rr.Scalars(np.asarray(values, dtype=np.float64)))
        self.rec.log("safety/interventions", rr.Scalars(float(len(record.interventions))))
        if self._task:
            self._log_interventions_summarised(record)
        elif record.interventions:
            self.rec.log(
                "events",
                rr.TextLog(f"safety: {', '.join(sorted(set(record.interventions)))}", level="WARN"),
            )
        if record.status != self._status:
            level = "ERROR" if record.status == "estop" else "INFO"
            self.rec.log("events", rr.TextLog(f"status {self._status} -> {record.status}", level=level))
            self._status = record.status
        if self._fk is not None:
            measured = self._fk(record.measured)
            if measured is not None:
                self.rec.log("world/ee_measured", rr.Points3D(measured, radii=0.01, colors=[[255, 127, 14]]))
            if np.all(np.isfinite(record.commanded)):
                commanded = self._fk(record.commanded)
                if commanded is not None:
                    self.rec.log(
                        "world/ee_commanded", rr.Points3D(commanded, radii=0.008, colors=[[31, 119, 180]])
                    )

    def _log_task(self, markdown: str, event: str | None) -> None:
        rr = self._rr
        self.rec.log("task", rr.TextDocument(markdown, media_type="text/markdown"))
        if event:
            self.rec.log("events", rr.TextLog(event, level="INFO"))

    def _log_interventions_summarised(self, record: TickRecord) -> None:
        """A count per filter, and an event only when the set of filters acting changes."""
        rr = self._rr
        acting = frozenset(record.interventions)
        for name in acting:
            self._filter_counts[name] = self._filter_counts.get(name, 0) + 1
            self.rec.log(f"safety/{name}", rr.Scalars(float(self._filter_counts[name])))
        if acting != self._acting:
            if acting:
                text = f"safety acting: {', '.join(sorted(acting))}"
                self.rec.log("events", rr.TextLog(text, level="WARN"))
            else:
                self.rec.log("events", rr.TextLog("safety: no filter acting", level="INFO"))
            self._acting = acting

    def close(self, timeout: float = 10.0) -> None:
        """Log what is queued, then flush and close the sinks (the .rrd file is complete after)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("display: the view's queue did not drain; the last events are not shown")
        self._thread.join(timeout)
        if self.dropped:
            log.warning("display: %d events dropped (the view could not keep up)", self.dropped)
        try:
            self.rec.flush()
            self.rec.disconnect()
        except Exception as exc:  # a sink that died (viewer closed, server gone): the run stands
            log.warning("display: could not flush the view: %s", exc)


def open_view(
    spec: RobotSpec,
    options: DisplayOptions,
    *,
    name: str,
    forward_kinematics: Callable[[np.ndarray], np.ndarray | None] | None = None,
    views: Sequence[str] = (),
    lossless: bool = False,
    announce: Callable[[str], None] = log.info,
    camera_poses: Mapping[str, np.ndarray] | None = None,
    task: bool = False,
) -> RerunView | None:
    """The live view the options ask for, or ``None`` when they ask for none."""
    if not options.wanted:
        return None
    return RerunView(
        spec,
        options,
        name=name,
        forward_kinematics=forward_kinematics,
        views=views,
        lossless=lossless,
        announce=announce,
        camera_poses=camera_poses,
        task=task,
    )
