"""The graph's metrics (`ray.util.metrics`): exported by every node's Prometheus endpoint with a
`ray_` prefix, and shown on the Ray dashboard's Metrics view."""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

_LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class IngressMetrics:
    def __init__(self):
        self.requests = Counter("t2ray_requests", "requests answered, by strategy and expert",
                                tag_keys=("strategy", "expert"))
        self.errors = Counter("t2ray_errors", "requests refused or failed, by HTTP status",
                              tag_keys=("status",))
        self.first_pass = Histogram("t2ray_first_pass_seconds",
                                    "pass 1 (routing) latency of routed requests",
                                    boundaries=_LATENCY_BOUNDS, tag_keys=("strategy",))
        self.total = Histogram("t2ray_request_seconds", "ingress latency of answered requests",
                               boundaries=_LATENCY_BOUNDS, tag_keys=("strategy",))


class AdapterCacheMetrics:
    def __init__(self):
        self.lookups = Counter("t2ray_adapter_cache", "generated-adapter cache lookups",
                               tag_keys=("result",))  # hit | miss
