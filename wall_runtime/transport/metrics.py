"""Server metrics: labelled counters and latency histograms, as a snapshot dict and as Prometheus
text exposition format (version 0.0.4), optionally served over HTTP for a Prometheus scrape.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# Milliseconds; spans sub-millisecond transport stages up to multi-second stalls.
LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)

PREFIX = "wall_runtime_server"


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (what a bucketed histogram can say)."""
        if self.count == 0:
            return float("nan")
        target = q * self.count
        running = 0
        for i, c in enumerate(self.counts):
            running += c
            if running >= target and c:
                return self.bounds[i] if i < len(self.bounds) else float("inf")
        return float("inf")

    def snapshot(self) -> dict[str, Any]:
        return {
            "buckets": list(self.bounds),
            "counts": list(self.counts),
            "sum": self.sum,
            "count": self.count,
        }


class ServerMetrics:
    """Thread-safe: the I/O thread and the inference worker both record into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(
        self, name: str, value: float, buckets: Iterable[float] = LATENCY_BUCKETS_MS, **labels: str
    ) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            hist = self.histograms.get(key)
            if hist is None:
                hist = self.histograms[key] = Histogram(buckets)
            hist.observe(value)

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> dict[str, Any]:
        """Plain data (msgpack- and JSON-friendly) for the ``stats`` reply and the CLI."""
        with self._lock:
            return {
                "counters": [
                    {"name": n, "labels": dict(lb), "value": v}
                    for (n, lb), v in sorted(self.counters.items())
                ],
                "histograms": [
                    {"name": n, "labels": dict(lb), **h.snapshot()}
                    for (n, lb), h in sorted(self.histograms.items())
                ],
                "gauges": dict(sorted(self.gauges.items())),
            }

    def prometheus(self) -> str:
        return render_prometheus(self.snapshot())


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    items = {**labels, **(extra or {})}
    if not items:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in items.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(items, esc, strict=True)) + "}"


def _num(x: float) -> str:
    if x == float("inf"):
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def render_prometheus(snap: dict[str, Any]) -> str:
    """Prometheus text format from a ``ServerMetrics.snapshot()`` (also one fetched over the wire)."""
    lines: list[str] = []
    typed: set[str] = set()
    for c in snap["counters"]:
        name = f"{PREFIX}_{c['name']}_total"
        if name not in typed:
            lines.append(f"# TYPE {name} counter")
            typed.add(name)
        lines.append(f"{name}{_labels(c['labels'])} {_num(c['value'])}")
    for g, value in snap["gauges"].items():
        name = f"{PREFIX}_{g}"
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {_num(value)}")
    for h in snap["histograms"]:
        name = f"{PREFIX}_{h['name']}"
        if name not in typed:
            lines.append(f"# TYPE {name} histogram")
            typed.add(name)
        running = 0
        for bound, count in zip([*h["buckets"], float("inf")], h["counts"], strict=True):
            running += count
            lines.append(f"{name}_bucket{_labels(h['labels'], {'le': _num(bound)})} {running}")
        lines.append(f"{name}_sum{_labels(h['labels'])} {_num(h['sum'])}")
        lines.append(f"{name}_count{_labels(h['labels'])} {h['count']}")
    return "\n".join(lines) + "\n"


def histogram_quantile(h: dict[str, Any], q: float) -> float:
    hist = Histogram(h["buckets"])
    hist.counts = list(h["counts"])
    hist.count = int(h["count"])
    return hist.quantile(q)


class MetricsHTTPServer:
    """``GET /metrics`` in Prometheus text format, on its own thread (loopback unless told otherwise)."""

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics http: " + fmt, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
