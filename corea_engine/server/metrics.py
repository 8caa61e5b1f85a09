"""Prometheus metrics of the cascade service, on their own registry (one per server).

Deferral rate = corea_deferred_total / corea_requests_total; savings = the sum of
corea_llm_only_cost_total minus corea_cost_total. Per-tier series carry the tier's name in the
label `tier` ("slm" and "llm" with two tiers), from the result's per-tier trace; per tier and
decision, corea_tier_decisions_total counts accept / defer / answer / failed / fallback.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..cascade import SolveResult
from ..contract import GrammarCache

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class CoreaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("corea_requests", "Solve requests by outcome", ["method", "outcome"], registry=r)
        self.deferred = Counter("corea_deferred", "Requests the policy deferred to the LLM", ["mode"], registry=r)
        self.degraded = Counter("corea_degraded", "Requests answered degraded (LLM unavailable)", registry=r)
        self.answered_by = Counter("corea_answered", "Requests by the tier that answered", ["tier"], registry=r)
        self.confidence = Histogram("corea_slm_confidence", "SLM confidence (the source the decision used)",
                                    buckets=_CONFIDENCE_BUCKETS, registry=r)
        self.latency = Histogram("corea_latency_seconds", "Latency per tier and end to end", ["tier"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("corea_tokens", "Tokens per tier", ["tier", "kind"], registry=r)
        self.cost = Counter("corea_cost", "Cost per tier in the configured unit", ["tier"], registry=r)
        self.tier_decisions = Counter("corea_tier_decisions", "Tier runs by tier and what they ended as",
                                      ["tier", "decision"], registry=r)
        self.llm_only_cost = Counter("corea_llm_only_cost", "What the LLM alone would have cost", registry=r)
        self.inflight = Gauge("corea_inflight_requests", "Requests in flight (a batch counts its items)", registry=r)
        self.cache_entries = Gauge("corea_cache_entries", "Entries in a bounded cache or table keyed by client input",
                                   ["cache"], registry=r)
        self.track_cache("grammar", GrammarCache.total_entries)

    def track_cache(self, name: str, size) -> None:
        """Report size() (entries, read at scrape time) as corea_cache_entries{cache=name}."""
        self.cache_entries.labels(name).set_function(size)

    def observe(self, method: str, result: SolveResult, cost_split: tuple[float, float]) -> None:
        outcome = "degraded" if result.degraded else ("deferred" if result.deferred else "accepted")
        self.requests.labels(method, outcome).inc()
        if result.deferred:
            self.deferred.labels(result.mode).inc()
        if result.degraded:
            self.degraded.inc()
        self.answered_by.labels(result.answered_tier or result.answered_by or "none").inc()
        if result.confidence is not None:
            self.confidence.observe(result.confidence)
        self.latency.labels("total").observe(result.latency_ms / 1000)
        self.llm_only_cost.inc(result.llm_only_cost)
        if result.trace:  # every tier that ran, by name
            for t in result.trace:
                self.tier_decisions.labels(t.tier, t.decision or "none").inc()
                self.latency.labels(t.tier).observe(t.latency_ms / 1000)
                self.tokens.labels(t.tier, "prompt").inc(t.prompt_tokens)
                self.tokens.labels(t.tier, "completion").inc(t.completion_tokens)
                self.cost.labels(t.tier).inc(t.cost)
            return
        if result.slm_latency_ms:
            self.latency.labels("slm").observe(result.slm_latency_ms / 1000)
        if result.llm_latency_ms:
            self.latency.labels("llm").observe(result.llm_latency_ms / 1000)
        for tier, prompt, completion in (("slm", result.slm_prompt_tokens, result.slm_completion_tokens),
                                         ("llm", result.llm_prompt_tokens, result.llm_completion_tokens)):
            self.tokens.labels(tier, "prompt").inc(prompt)
            self.tokens.labels(tier, "completion").inc(completion)
        self.cost.labels("slm").inc(cost_split[0])
        self.cost.labels("llm").inc(cost_split[1])

    def observe_result(self, method: str, result: SolveResult, config) -> None:
        """observe() with the cost split priced by the cascade's config (gRPC and HTTP alike)."""
        self.observe(method, result, config.tier_costs(result.slm_prompt_tokens, result.slm_completion_tokens,
                                                       result.llm_prompt_tokens, result.llm_completion_tokens))

    def failed(self, method: str, outcome: str) -> None:
        """invalid | error | cancelled | deadline"""
        self.requests.labels(method, outcome).inc()

    def serve_http(self, port: int, addr: str):
        """Expose /metrics on addr:port (a host name or IP, no brackets); returns the HTTP server
        (call .shutdown() to stop it)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
