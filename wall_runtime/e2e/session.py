"""One closed-loop session: a robot side, a policy link, the control loop, reports.

Shared by ``wall-runtime demo`` (which also starts a policy server in-process) and by
``wall-runtime run --robot ... --server ...`` on a physical robot.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.action_space.edge import FitError, ModelEdge
from wall_runtime.action_space.source import EdgeSource
from wall_runtime.control.estop import EStop
from wall_runtime.control.loop import ControlLoop
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop, loop_parts
from wall_runtime.e2e.policy_link import ClientChunkSource
from wall_runtime.e2e.robot_side import RobotSide
from wall_runtime.recording.subscriber import LoopRecorder
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.errors import ErrorCode, ServerError
from wall_runtime.transport.protocol import RobotDescription
from wall_runtime.types import ActionChunk, PolicyMetadata

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    """The robot and the policy do not fit together, or a part did not come up."""


def describe_robot(
    side: RobotSide, robot_id: str, state_dim: int | None, timeout: float = 10.0
) -> RobotDescription:
    """The hello for this robot: its views with the shapes its cameras actually deliver, and the
    state vector's size (the checkpoint's: the edge fills its layout; None leaves it to the policy,
    which the server then takes for the session)."""
    cameras: dict[str, tuple[int, int, int]] = {}
    if side.cameras is not None:
        snap = side.cameras.wait_snapshot(timeout=timeout)
        for view, image in snap.images(side.cameras.views).items():
            cameras[view] = (int(image.shape[0]), int(image.shape[1]), 3)
    return RobotDescription(
        robot_id=robot_id,
        embodiment=side.config.mapping.norm_key,
        cameras=cameras,
        state_dim=state_dim,
        action_period=1.0 / side.config.control_hz,
    )


def check_fit(meta: PolicyMetadata, side: RobotSide) -> ModelEdge:
    """The model edge for this policy, or a :class:`SessionError` naming the slot or key that does
    not fit."""
    mapping = side.config.mapping
    if mapping.norm_key and meta.norm_keys and mapping.norm_key not in meta.norm_keys:
        # the server would fail every request on it (its log says why, the robot would only wait)
        raise SessionError(
            f"{side.config.path}: model.norm_key {mapping.norm_key!r} is not a normalisation key of the "
            f"policy {meta.model} (it has: {', '.join(meta.norm_keys)})"
        )
    try:
        edge = side.edge(meta)
    except FitError as exc:
        raise SessionError(f"{side.config.path}: {exc}") from None
    views = set(side.cameras.views.values()) if side.cameras is not None else set()
    missing = [c for c in meta.cameras if c not in views]
    if missing:
        log.warning("the policy expects views %s that %s does not provide", missing, side.config.name)
    return edge


@dataclass
class PolicyLink:
    """A handshaken policy connection and the model edge that fits it to the robot."""

    source: ClientChunkSource
    edge: ModelEdge

    @property
    def client(self) -> PolicyClient:
        return self.source.client

    @property
    def metadata(self) -> PolicyMetadata:
        assert self.source.client.metadata is not None
        return self.source.client.metadata


def _probe_state_dim(side: RobotSide, endpoint: str, robot_id: str, **keys: Any) -> int:
    """The policy's state size from a throw-away handshake: only for a server older than the hello
    that may leave ``state_dim`` to the policy (it refuses such a hello, naming the field)."""
    probe = PolicyClient(endpoint, describe_robot(side, robot_id, 1), **keys)
    try:
        return probe.connect(timeout=30.0).state_dim
    finally:
        probe.close()


def _connect(description: RobotDescription, endpoint: str, keys: dict[str, Any]) -> PolicyClient:
    """A handshaken client (closed again if the handshake fails)."""
    client = PolicyClient(endpoint, description, **keys)
    try:
        client.connect(timeout=30.0)
    except BaseException:
        client.close()
        raise
    return client


def _refuses_open_state_dim(exc: ServerError) -> bool:
    """An older server's refusal of a hello without ``state_dim`` ('hello' message lacks field ...)."""
    return exc.code == ErrorCode.BAD_MESSAGE and "lacks field 'state_dim'" in exc.message


def open_policy_link(
    side: RobotSide,
    endpoint: str,
    *,
    robot_id: str | None = None,
    server_key: Path | None = None,
    client_key: Path | None = None,
    deadline_s: float | None = None,
) -> PolicyLink:
    """Handshake with the server as this robot and fit the policy's layout to it (the edge); the
    client is closed again if either fails. Requests default to a deadline of one chunk's duration."""
    robot_id = robot_id or side.config.name
    keys: dict[str, Any] = {"server_key": server_key, "client_key": client_key}
    # robot.yaml need not pin the checkpoint's state size: the hello then leaves it to the policy
    # and the welcome says which it took (one handshake)
    description = describe_robot(side, robot_id, side.config.mapping.state_dim)
    try:
        client = _connect(description, endpoint, keys)
    except ServerError as exc:
        if description.state_dim is not None or not _refuses_open_state_dim(exc):
            raise
        log.info("the server at %s predates hellos without state_dim: asking the policy's first", endpoint)
        state_dim = _probe_state_dim(side, endpoint, robot_id, **keys)
        client = _connect(replace(description, state_dim=state_dim), endpoint, keys)
    try:
        meta = client.metadata
        assert meta is not None
        edge = check_fit(meta, side)
    except BaseException:
        client.close()
        raise
    # a chunk lasts horizon rows at the checkpoint's declared row period, else the robot's period
    period = meta.action_period or description.action_period
    source = ClientChunkSource(client, deadline_s=deadline_s or meta.action_horizon * period)
    return PolicyLink(source, edge)


class StageStats:
    """Per-stage latency samples (ms) from the chunks' timing, plus the round trip seen by the robot."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, chunk: ActionChunk, received_at: float) -> None:
        for stage, ms in chunk.timing_ms.items():
            self.samples[stage].append(float(ms))
        self.samples["capture_to_chunk"].append((received_at - chunk.stamp) * 1e3)

    def percentiles(self) -> dict[str, dict[str, float]]:
        return {
            k: {
                "p50": float(np.percentile(v, 50)),
                "p95": float(np.percentile(v, 95)),
                "p99": float(np.percentile(v, 99)),
                "n": len(v),
            }
            for k, v in self.samples.items()
            if v
        }


class _TimedSource:
    """Notes when each chunk reached the control loop, for the stage statistics."""

    def __init__(self, inner: Any, stats: StageStats, clock: Callable[[], float]) -> None:
        self.inner = inner
        self.stats = stats
        self.clock = clock

    def request(self, observation: Any) -> None:
        self.inner.request(observation)

    def poll(self) -> ActionChunk | None:
        chunk = self.inner.poll()
        if chunk is not None:
            self.stats.add(chunk, self.clock())
        return chunk


class _EdgeTimed:
    """Notes how long the model edge took on each chunk (composition, EE safety, IK)."""

    def __init__(self, inner: EdgeSource, stats: StageStats) -> None:
        self.inner = inner
        self.stats = stats

    def request(self, observation: Any) -> None:
        self.inner.request(observation)

    def poll(self) -> ActionChunk | None:
        chunk = self.inner.poll()
        if chunk is not None and "model_edge" in chunk.timing_ms:
            self.stats.samples["model_edge"].append(float(chunk.timing_ms["model_edge"]))
        return chunk


@dataclass
class SessionOptions:
    instruction: str
    smoother: str = "crossfade"
    deadline_s: float | None = None  # per request; default: the chunk's own duration
    robot_id: str = ""
    record_to: Path | None = None  # a LeRobot v3 dataset folder: this run becomes its next episode
    safe_pose: bool = True
    disabled_filters: frozenset[str] = field(default_factory=frozenset)
    server_key: Path | None = None  # CURVE keys (`run`)
    client_key: Path | None = None


class Session:
    """Connects a started robot side to a policy server, puts the model edge in front of the control
    loop and runs it."""

    def __init__(
        self,
        side: RobotSide,
        endpoint: str,
        options: SessionOptions,
        estop: EStop | None = None,
        subscribers: Sequence[LoopRecorder] = (),
    ):
        """``subscribers`` are told what the loop does, after the recorder (e.g. the live view)."""
        self.side = side
        self.options = options
        policy = open_policy_link(
            side,
            endpoint,
            robot_id=options.robot_id or None,
            deadline_s=options.deadline_s,
            server_key=options.server_key,
            client_key=options.client_key,
        )
        self.link = policy.source
        self.client = self.link.client
        self.metadata = policy.metadata
        self.stages = StageStats()
        # the edge converts model chunks to joint chunks off the control thread; the loop (and so
        # its recorder) sees joint chunks, so a recording replays without the checkpoint's layout
        # or kinematics
        self.edge = EdgeSource(policy.edge, _TimedSource(self.link, self.stages, time.monotonic))
        source: Any = _EdgeTimed(self.edge, self.stages)
        observe = side.observer(options.instruction, self.edge)
        loop_options = LoopOptions(
            smoother=options.smoother,
            safe_pose=options.safe_pose,
            disabled_filters=frozenset(options.disabled_filters),
        )
        self.recorder = None
        if options.record_to is not None:
            from wall_runtime.recording.recorder import LeRobotRecorder, loop_settings, recording_layout

            cfg, _ = loop_parts(side.adapter.spec, side.safety, loop_options, side.safe_pose)
            self.recorder = LeRobotRecorder(
                options.record_to,
                recording_layout(side, self.client.robot.cameras),
                options.instruction,
                meta=loop_settings(cfg, side.config.path),
                images=side.latest_images,
            )
        self.loop = assemble_loop(
            side.adapter,
            source,
            observe,
            side.safety,
            loop_options,
            safe_pose=side.safe_pose,
            estop=estop,
            recorder=self.recorder,
            subscribers=subscribers,
        )

    def run(
        self,
        duration: float | None,
        should_stop: Callable[[], bool] | None = None,
        on_tick: Callable[[ControlLoop], Any] | None = None,
    ) -> dict[str, Any]:
        summary = self.loop.run(
            duration=duration if duration is not None else float("inf"),
            should_stop=should_stop,
            on_tick=on_tick,
        )
        summary["policy"] = self.metadata.to_dict()
        summary["stages_ms"] = self.stages.percentiles()
        summary["link_errors"] = dict(self.link.errors)
        summary["camera_refusals"] = dict(self.side.camera_refusals)
        summary["model_edge"] = {
            "interventions": self.edge.interventions,
            "orientation_residual_max_rad": self.edge.edge.orientation_residual,
        }
        return summary

    def write_report(self, folder: str | Path, summary: dict[str, Any], meta: dict[str, Any]) -> Path:
        from wall_runtime.e2e.report import write_report

        root = write_report(Path(folder), self.loop, summary, self.stages)
        from wall_runtime.recording.lerobot_v3 import DatasetError

        try:
            self.finish_recording({"summary": summary, **meta})
        except DatasetError as exc:  # the report stands without it; say why it is missing
            log.error("recording not saved: %s", exc)
        return root

    def finish_recording(self, meta: dict[str, Any]) -> Path | None:
        """Write the recorded episode's metadata (once); the dataset folder, or None if not recording."""
        if self.recorder is None:
            return None
        recorder, self.recorder = self.recorder, None
        return recorder.close(meta)

    def close(self) -> None:
        try:
            self.finish_recording({})  # a run that ended early still keeps what it recorded
        except Exception as exc:
            log.error("recording not saved: %s", exc)
        finally:
            self.edge.close()  # stops the edge's thread
            self.client.close()
