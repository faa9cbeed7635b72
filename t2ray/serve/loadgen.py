"""A closed-loop HTTP load generator for the endpoint (the load test and bench/serve_latency.py):
`concurrency` clients send the given bodies in turn until all are sent or time is up."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests (2xx)
    statuses: Counter = field(default_factory=Counter)
    bodies: list[dict] = field(default_factory=list)  # 2xx bodies, in completion order
    wall_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        """Answered requests per second of wall time."""
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


def post(url: str, body: dict, key: str | None = None, timeout: float = 120) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, {"error": {"message": raw.decode(errors="replace")}}


def run_load(url: str, bodies: list[dict], concurrency: int, max_seconds: float,
             key: str | None = None) -> LoadResult:
    """POST every body once (in order, `concurrency` at a time) to `url`, stopping early when
    `max_seconds` have passed; connection failures count as status 0."""
    result, lock, nxt = LoadResult(), threading.Lock(), iter(range(len(bodies)))
    start = time.perf_counter()

    def client():
        while time.perf_counter() - start < max_seconds:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                status, body = post(url, bodies[i], key)
            except OSError:
                status, body = 0, {}
            with lock:
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.latencies.append(time.perf_counter() - t)
                    result.bodies.append(body)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - start
    return result
