"""Prometheus metrics of the aggregator, served over HTTP with prometheus-client.

`fedbus aggregator --metrics-port 9464` exposes /metrics for a Prometheus
server to scrape; the names follow Prometheus conventions (`_total` for
counters, base units). Each daemon has its own registry, so two daemons in
one process (tests) do not share numbers. The daemon feeds them as it
decides, next to its event log.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedbus.broker.messages import AckMessage

#: Staleness buckets: Fibonacci-like, dense where FedBuff lives (0-10).
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "fedbus_updates_accepted", "Updates accepted into the buffer", registry=r
        )
        self.rejected = Counter(
            "fedbus_updates_rejected", "Updates refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "fedbus_updates_duplicate", "Resends of decided updates, answered again", registry=r
        )
        self.staleness = Histogram(
            "fedbus_update_staleness",
            "Staleness (model versions behind) of accepted updates",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.version = Gauge("fedbus_model_version", "Current global model version", registry=r)
        self.buffered = Gauge(
            "fedbus_buffer_fill", "Updates in the buffer, not yet in the model", registry=r
        )
        self.buffer_size = Gauge("fedbus_buffer_size", "Updates per model step (K)", registry=r)
        self.bytes_in = Counter("fedbus_bytes_in", "Payload bytes received", registry=r)
        self.bytes_out = Counter("fedbus_bytes_out", "Payload bytes published", registry=r)
        self.models = Counter("fedbus_models_published", "Model publications", registry=r)
        self.last_seen = Gauge(
            "fedbus_node_last_seen_timestamp_seconds",
            "Unix time of the last update decided for each node",
            ["node"],
            registry=r,
        )
        self.epsilon = Gauge(
            "fedbus_dp_epsilon", "Central DP epsilon spent so far (+Inf: no DP)", registry=r
        )

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scrape target
        start_http_server(port, addr=host, registry=self.registry)

    def update(self, ack: AckMessage, staleness: int | None, size: int, wall_time: float) -> None:
        self.bytes_in.inc(size)
        self.last_seen.labels(ack.node).set(wall_time)
        if ack.duplicate:
            self.duplicates.inc()
        elif ack.accepted:
            self.accepted.inc()
            if staleness is not None:
                self.staleness.observe(staleness)
        else:
            self.rejected.labels(ack.reason.value if ack.reason else "unknown").inc()

    def state(self, version: int, buffered: int, buffer_size: int, epsilon: float | None) -> None:
        self.version.set(version)
        self.buffered.set(buffered)
        self.buffer_size.set(buffer_size)
        if epsilon is not None:
            self.epsilon.set(epsilon)
