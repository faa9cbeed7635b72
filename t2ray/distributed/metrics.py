"""What one training step costs, measured on every rank and exported to Prometheus.

`StepMeter` adds to a step's stats: its wall time, the tokens it processed per second on this
rank and on all ranks together, the bytes of gradient each rank sends to synchronise the
trainable parameters (z for SVF: the gradient all-reduce, or DeepSpeed's reduce-scatter), and
this rank's peak memory (CUDA allocations on a GPU, the process's peak resident set on a CPU)
with the largest over the ranks. Inside Ray the same numbers go to `ray.util.metrics` gauges
tagged by run and rank, which the node's metrics agent exports as `ray_t2ray_train_*` for the
dashboard's Metrics view (cluster/grafana-t2ray-training.json lays them out)."""

from __future__ import annotations

import resource

import torch

# stat name -> (gauge name, description); Ray's exporter prefixes each name with `ray_`.
GAUGES = {
    "step_time_s": ("t2ray_train_step_time_s", "Wall time of one optimiser step (s)."),
    "tokens_per_s": ("t2ray_train_tokens_per_s", "Tokens this rank processed per second."),
    "grad_sync_bytes": ("t2ray_train_grad_sync_bytes",
                        "Gradient bytes each rank synchronises per step."),
    "rank_memory_bytes": ("t2ray_train_rank_memory_bytes",
                          "Peak memory of this rank (CUDA allocations, or resident set)."),
    "loss": ("t2ray_train_loss", "Training loss of the step."),
}
TAGS = ("run", "rank")


def rank_memory_bytes() -> int:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def trainable_fp32_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of these parameters in fp32. Under ZeRO-3 a parameter may be empty between
    forwards; `ds_numel` is its whole size."""
    return sum(getattr(p, "ds_numel", p.numel()) * 4 for p in params)


def grad_sync_bytes(params: list[torch.nn.Parameter], world: int) -> int:
    """Bytes of gradient a rank sends per step: every trainable element once, none when
    alone."""
    return 0 if world == 1 else trainable_fp32_bytes(params)


class StepMeter:
    """Measures each step on this rank, sums and maxes over the ranks, exports to Ray."""

    def __init__(self, params: list[torch.nn.Parameter], rank: int, world: int,
                 run: str | None = None):
        self.world = world
        self.sync_bytes = grad_sync_bytes(params, world)
        self.gauges = _gauges() if run is not None else None
        self.tags = {"run": run or "", "rank": str(rank)}

    def measure(self, stats: dict, seconds: float, tokens: int | None) -> None:
        """Add this step's measures to `stats` (rank 0's become the run's history)."""
        memory = rank_memory_bytes()
        total_tokens, max_memory = self._over_ranks(tokens or 0, memory)
        stats.update(step_time_s=seconds, grad_sync_bytes=self.sync_bytes,
                     rank_memory_bytes=memory, max_rank_memory_bytes=max_memory)
        if tokens is not None:
            stats.update(tokens_per_s=tokens / seconds, global_tokens_per_s=total_tokens / seconds)
        if self.gauges:
            for key, gauge in self.gauges.items():
                if isinstance(stats.get(key), (int, float)):
                    gauge.set(float(stats[key]), tags=self.tags)

    def _over_ranks(self, tokens: int, memory: int) -> tuple[int, int]:
        if self.world == 1:
            return tokens, memory
        import torch.distributed as dist

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces on the GPU
        total = torch.tensor([float(tokens)], dtype=torch.float64, device=device)
        peak = torch.tensor([float(memory)], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return int(total.item()), int(peak.item())


def _gauges() -> dict:
    from ray.util.metrics import Gauge

    return {key: Gauge(name, description=text, tag_keys=TAGS)
            for key, (name, text) in GAUGES.items()}
