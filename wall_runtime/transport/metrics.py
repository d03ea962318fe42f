"""Server metrics: labelled counters and latency histograms, as a snapshot dict and, through
``prometheus_client``, as Prometheus text (``# HELP`` and ``# TYPE`` lines, seconds as the unit),
optionally served over HTTP for a Prometheus scrape.
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


# ``# HELP`` lines; names as recorded (histograms in ms are exported in seconds, Prometheus' unit)
HELP = {
    "requests": "Messages received, by type.",
    "replies": "Replies sent, by type.",
    "errors": "Error replies, by code.",
    "dropped_replies": "Replies that could not be sent, by reason.",
    "superseded": "Observations replaced by a newer one of the same robot before compute.",
    "policy_failures": "Batches in which the policy raised or returned unusable actions.",
    "peer_events": "Connection events of the ZeroMQ socket, by event.",
    "sessions": "Robots with a live session.",
    "sessions_attached": "Sessions on the session endpoint (the rest are on the public one).",
    "attached": "Sessions that moved to the session endpoint.",
    "decode_ms": "Time to decode and validate an observation.",
    "queue_wait_ms": "Time an observation waited for compute.",
    "infer_ms": "Time of one policy call (a batch).",
    "batch_size": "Observations per policy call.",
    "server_total_ms": "Time from receiving an observation to sending its chunk.",
}


def _help(name: str) -> str:
    return HELP.get(name, name.replace("_", " ") + ".")


def _label_names(entries: list[dict[str, Any]]) -> list[str]:
    return sorted({k for e in entries for k in e["labels"]})


def families(snap: dict[str, Any], prefix: str = PREFIX) -> list[Any]:
    """prometheus_client metric families from a ``ServerMetrics.snapshot()``: counters, gauges and
    histograms; ``*_ms`` histograms become ``*_seconds`` (bounds and sums scaled)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    out: list[Any] = []
    grouped: dict[str, list[dict[str, Any]]] = {}
    for c in snap["counters"]:
        grouped.setdefault(c["name"], []).append(c)
    for name, entries in grouped.items():
        labels = _label_names(entries)
        fam = CounterMetricFamily(f"{prefix}_{name}", _help(name), labels=labels)
        for e in entries:
            fam.add_metric([str(e["labels"].get(k, "")) for k in labels], float(e["value"]))
        out.append(fam)
    for name, value in snap["gauges"].items():
        out.append(GaugeMetricFamily(f"{prefix}_{name}", _help(name), value=float(value)))
    hists: dict[str, list[dict[str, Any]]] = {}
    for h in snap["histograms"]:
        hists.setdefault(h["name"], []).append(h)
    for name, entries in hists.items():
        scale, exported = (1e-3, name[: -len("_ms")] + "_seconds") if name.endswith("_ms") else (1.0, name)
        labels = _label_names(entries)
        fam = HistogramMetricFamily(f"{prefix}_{exported}", _help(name), labels=labels)
        for e in entries:
            running, buckets = 0, []
            for bound, count in zip([*e["buckets"], float("inf")], e["counts"], strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound) * scale), running))
            fam.add_metric([str(e["labels"].get(k, "")) for k in labels], buckets, float(e["sum"]) * scale)
        out.append(fam)
    return out


class _Snapshot:
    """A prometheus_client collector over whatever ``source()`` returns at scrape time."""

    def __init__(self, source: Any, prefix: str = PREFIX) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterable[Any]:
        return families(self.source(), self.prefix)


def render_prometheus(snap: dict[str, Any]) -> str:
    """Prometheus text format from a ``ServerMetrics.snapshot()`` (also one fetched over the wire),
    rendered by prometheus_client."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(lambda: snap))
    return generate_latest(registry).decode()


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
                from prometheus_client import CONTENT_TYPE_LATEST

                body = metrics.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
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
