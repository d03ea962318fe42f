"""The robot side's metrics for a Prometheus scrape (``run`` / ``demo --metrics-http HOST:PORT``).

A prometheus_client collector reads the control loop's own counters at scrape time, so the loop
records nothing extra: loop rate and overruns, chunks and requests, interventions by filter and
joint, watchdog trips and e-stop triggers. Units are seconds and hertz.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

PREFIX = "wall_runtime_robot"

COUNTERS = {
    "ticks": "Control ticks run.",
    "overruns": "Control periods skipped because a tick overran its deadline.",
    "requests": "Observations sent to the policy.",
    "request_errors": "Observations that could not be sent.",
    "stale_observations": "Ticks whose observation was refused (cameras stale or out of sync).",
    "chunks_received": "Action chunks received from the policy.",
    "chunks_discarded_estop": "Chunks dropped because the e-stop was engaged.",
}


class ControlLoopCollector:
    """Collects from a ``ControlLoop`` (anything with its ``counters``, ``safety``, ``watchdog``,
    ``estop`` and ``config.control_hz``)."""

    def __init__(self, loop: Any, robot: str) -> None:
        self.loop = loop
        self.robot = robot
        self.started = time.monotonic()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        loop = self.loop
        labels = ["robot"]
        for name, doc in COUNTERS.items():
            fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            fam.add_metric([self.robot], float(loop.counters.get(name, 0)))
            yield fam
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = GaugeMetricFamily(
            f"{PREFIX}_loop_rate_hertz", "Control ticks per second since the start.", labels=labels
        )
        rate.add_metric([self.robot], loop.counters.get("ticks", 0) / elapsed)
        yield rate
        target = GaugeMetricFamily(f"{PREFIX}_loop_target_hertz", "Configured control rate.", labels=labels)
        target.add_metric([self.robot], float(loop.config.control_hz))
        yield target
        interventions = CounterMetricFamily(
            f"{PREFIX}_interventions",
            "Safety interventions (a joint's target changed by a filter), by filter and joint.",
            labels=["robot", "filter", "joint"],
        )
        for (filt, joint), n in sorted(loop.safety.joint_counts.items()):
            interventions.add_metric([self.robot, filt, joint], float(n))
        yield interventions
        trips = CounterMetricFamily(
            f"{PREFIX}_watchdog_trips", "Watchdog trips (no valid target in time).", labels=labels
        )
        trips.add_metric([self.robot], float(loop.watchdog.trips))
        yield trips
        triggers = CounterMetricFamily(f"{PREFIX}_estop_triggers", "E-stop engagements.", labels=labels)
        triggers.add_metric([self.robot], float(loop.estop.triggers))
        yield triggers
        engaged = GaugeMetricFamily(
            f"{PREFIX}_estop_engaged", "1 while the e-stop is engaged.", labels=labels
        )
        engaged.add_metric([self.robot], 1.0 if loop.estop.engaged else 0.0)
        yield engaged


class RobotMetricsServer:
    """``GET /metrics`` for one control loop, on its own thread; loopback unless told otherwise."""

    def __init__(self, loop: Any, robot: str, host: str = "127.0.0.1", port: int = 0) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ControlLoopCollector(loop, robot))
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._httpd.server_address[1])

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` = loopback) → (host, port); ValueError naming the option otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-http takes HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)
