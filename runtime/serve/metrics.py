"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (no global registry, no global state)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGES = ("decode", "detect", "align", "invert", "search", "synthesize", "compose", "encode")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float], ready: Callable[[], float]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "beautyrt_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "beautyrt_http_request_duration_seconds",
            "Time from request arrival to the end of the response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "beautyrt_stage_duration_seconds",
            "Time per pipeline stage of each photo: decode, detect, align, invert, search, synthesize, compose, encode",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "beautyrt_rejected", "Requests refused before any work, by reason", ["reason"], registry=r
        )
        self.jobs = Counter(
            "beautyrt_jobs", "Work items finished, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.cancelled = Counter(
            "beautyrt_cancelled",
            "Searches cancelled, by reason (disconnect, timeout, abandoned, client, shutdown)",
            ["reason"],
            registry=r,
        )
        self.generations = Counter(
            "beautyrt_search_generations", "Search generations run (all jobs together)", registry=r
        )
        self.composes = Counter("beautyrt_composes", "Results re-rendered at another strength (no search)", registry=r)
        self.queue = Gauge("beautyrt_queue_depth", "Jobs waiting for a worker", registry=r)
        self.queue.set_function(queue_depth)
        self.inflight = Gauge("beautyrt_in_flight", "Jobs running in a worker", registry=r)
        self.inflight.set_function(in_flight)
        self.ready = Gauge("beautyrt_ready", "1 when the bundle is loaded and warmed up", registry=r)
        self.ready.set_function(ready)
        self.results = Gauge("beautyrt_results_kept", "Results kept for compose (LRU entries)", registry=r)
        self.results_bytes = Gauge(
            "beautyrt_results_kept_bytes", "Bytes of image data held by the kept results", registry=r
        )

    def observe_timings(self, timings: dict) -> None:
        for stage in STAGES:
            v = timings.get(stage)
            if isinstance(v, (int, float)):
                self.stage.labels(stage).observe(float(v))

    def render(self) -> bytes:
        return generate_latest(self.registry)
