"""Prometheus metrics of one server, in a registry of its own (several servers can live in one process).

Per-batch and per-job figures (batch sizes, latencies, tokens) are counted in plain Python numbers on the event
loop and turned into Prometheus families only when scraped: ``prometheus_client``'s locked ``observe`` would cost
more than the rest of a token's bookkeeping. Rare events (sessions created, evicted, refused) use its counters.
The per-request figures of the RPC interceptor (:class:`RpcStats`) are kept the plain way too.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Requests: a large Score or a long generation takes seconds.
RPC_BUCKETS = (*LATENCY_BUCKETS, 5.0, 10.0, 30.0, 60.0)


class FastHistogram:
    """Bucket counts and a sum, updated without locks from one thread."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect_left(self.bounds, x)] += 1
        self.sum += x

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((repr(float(b)), float(acc)))
        out.append(("+Inf", float(acc + self.counts[-1])))
        return out


class _LaneHistograms:
    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.bounds = name, doc, bounds
        self.by_lane: dict[str, FastHistogram] = {}

    def lane(self, lane: str) -> FastHistogram:
        h = self.by_lane.get(lane)
        if h is None:
            h = self.by_lane[lane] = FastHistogram(self.bounds)
        return h

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=["lane"])
        for lane, h in sorted(self.by_lane.items()):
            fam.add_metric([lane], h.buckets(), sum_value=h.sum)
        return fam


class RpcStats:
    """Latency of every request answered, by method and status code, for one model (event loop only, no locks).

    Exported as ``seqpred_rpc_duration_seconds{model,method,code}`` and, from the same counts,
    ``seqpred_rpc_requests_total{model,method,code}``.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.by_key: dict[tuple[str, str], FastHistogram] = {}

    def histogram(self, method: str, code: str) -> FastHistogram:
        h = self.by_key.get((method, code))
        if h is None:
            h = self.by_key[(method, code)] = FastHistogram(RPC_BUCKETS)
        return h

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.histogram(method, code).observe(seconds)

    def families(self) -> Iterator[Metric]:
        labels = ["model", "method", "code"]
        hist = HistogramMetricFamily(
            "seqpred_rpc_duration_seconds",
            "time to answer one request (a unary RPC, or one request of a Stream), by model, method and status code",
            labels=labels,
        )
        count = CounterMetricFamily(
            "seqpred_rpc_requests", "requests answered, by model, method and status code", labels=labels
        )
        for (method, code), h in sorted(self.by_key.items()):
            buckets = h.buckets()
            hist.add_metric([self.model, method, code], buckets, sum_value=h.sum)
            count.add_metric([self.model, method, code], buckets[-1][1])
        yield hist
        yield count


class Metrics:
    """Every metric the server exports; the list is in docs/service.md."""

    def __init__(self, active_sessions: Callable[[], float], model: str = "default") -> None:
        r = self.registry = CollectorRegistry()
        self.rpc = RpcStats(model)
        self.active = Gauge("seqpred_sessions_active", "live sessions", registry=r)
        self.active.set_function(active_sessions)
        self.created = Counter("seqpred_sessions_created_total", "sessions created", registry=r)
        self.evicted = Counter(
            "seqpred_sessions_evicted_total", "sessions evicted, by reason (idle, lifetime)", ["reason"], registry=r
        )
        self.closed = Counter("seqpred_sessions_closed_total", "sessions ended by end=true or CloseSession", registry=r)
        self.rejected = Counter(
            "seqpred_rejections_total", "requests refused for lack of capacity, by reason", ["reason"], registry=r
        )
        self.errors = Counter(
            "seqpred_request_errors_total", "failed requests, by gRPC status code", ["code"], registry=r
        )
        self.requests = Counter("seqpred_requests_total", "RPCs started, by method", ["rpc"], registry=r)
        self.tokens_per_s = Gauge(
            "seqpred_tokens_per_second", "tokens consumed per second over the last sweep interval", registry=r
        )
        self.batch_size = _LaneHistograms("seqpred_batch_size", "jobs per onnxruntime batch, by lane", BATCH_BUCKETS)
        self.batch_seconds = _LaneHistograms(
            "seqpred_batch_seconds", "time of one batch in onnxruntime, by lane", LATENCY_BUCKETS
        )
        self.step_latency = _LaneHistograms(
            "seqpred_step_latency_seconds",
            "time from a job's submission to its result (queueing + batch), by lane",
            LATENCY_BUCKETS,
        )
        self.tokens = 0
        self._tokens_at_tick = 0
        self._last_tick = time.monotonic()
        r.register(_Collector(self))

    def observe_batch(self, lane: str, jobs: int, tokens: int, seconds: float, latencies: list[float]) -> None:
        self.batch_size.lane(lane).observe(jobs)
        self.batch_seconds.lane(lane).observe(seconds)
        lat = self.step_latency.lane(lane)
        for x in latencies:
            lat.observe(x)
        self.tokens += tokens

    def tick(self) -> None:
        """Update the tokens/s gauge (called by the sweeper)."""
        now = time.monotonic()
        dt = now - self._last_tick
        if dt > 0:
            self.tokens_per_s.set((self.tokens - self._tokens_at_tick) / dt)
        self._tokens_at_tick = self.tokens
        self._last_tick = now

    def serve(self, port: int, host: str = "0.0.0.0") -> tuple[Any, int]:
        """Start the HTTP exporter; returns ``(server, port)`` (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)


class _Collector:
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield m.batch_size.family()
        yield m.batch_seconds.family()
        yield m.step_latency.family()
        yield CounterMetricFamily("seqpred_tokens", "tokens consumed by sessions and Score", value=m.tokens)
        yield from m.rpc.families()
