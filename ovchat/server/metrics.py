"""``/metrics`` in Prometheus's text format (prometheus_client), one registry per server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ovchat.engine import ReplyStats

# Buckets for a CPU: first tokens from tens of milliseconds to tens of seconds (long prompts).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)


class ServerMetrics:
    """Requests, tokens, TTFT and per-token latency, active requests; waiting requests and KV-cache use
    from the batched backend's pipeline when the engine has one."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Callable[[], Any], active: Callable[[], int]) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ovchat_requests", "Replies ended, by endpoint and finish reason (eos, stop, length, cancelled)",
            ["endpoint", "finish"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("ovchat_prompt_tokens", "Prompt tokens read", registry=r)
        self.generated_tokens = Counter("ovchat_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("ovchat_time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS,
                              registry=r)  # fmt: skip
        self.per_token = Histogram("ovchat_time_per_output_token_seconds", "Time per token after the first",
                                   buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.active = Gauge("ovchat_requests_active", "Replies the engine is making or will start", registry=r)
        self.active.set_function(active)
        self.running = Gauge("ovchat_requests_running", "Requests the batched loop is generating", registry=r)
        self.waiting = Gauge("ovchat_requests_waiting", "Requests waiting for a slot in the batched loop", registry=r)
        self.kv_cache = Gauge("ovchat_kv_cache_usage_percent", "Share of the KV cache in use", registry=r)
        self.kv_cache_limit = Gauge(
            "ovchat_kv_cache_limit_bytes", "Memory the KV cache may take (0: it grows with the replies)", registry=r
        )

    def finished(self, endpoint: str, stats: ReplyStats) -> None:
        self.requests.labels(endpoint=endpoint, finish=stats.finish_reason).inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated_tokens.inc(stats.new_tokens)
        if stats.ttft_s is not None:
            self.ttft.observe(stats.ttft_s)
        if stats.decode_tok_s:
            self.per_token.observe(1 / stats.decode_tok_s)

    def render(self) -> bytes:
        engine = self.engine()
        pipeline_metrics = getattr(getattr(engine, "backend", None), "metrics", None)
        if pipeline_metrics is not None:
            figures = pipeline_metrics()
            self.running.set(figures.running)
            self.waiting.set(figures.waiting)
            self.kv_cache.set(figures.cache_usage_percent)
        limit_gb = getattr(getattr(engine, "backend", None), "kv_cache_gb", None)
        if limit_gb is not None:
            self.kv_cache_limit.set(limit_gb * 2**30)
        return generate_latest(self.registry)
