"""Scaling runs: short SVF-RL and T2L-SFT training at 1, 2, ... N Ray Train workers and across
ZeRO stages, each point a real run of the same training code a user runs.

Every point keeps its global batch (strong scaling): SVF-RL splits `prompts_per_step` over the
ranks, T2L gives each rank `tasks_per_batch / workers` tasks. While the runs go, every rank
exports its step time, tokens/s, gradient-sync bytes and peak memory to Prometheus tagged by run
(t2ray.distributed.metrics; cluster/grafana-t2ray-training.json shows the runs side by side);
at the end the medians over the measured steps (the first `warmup` steps left out) become a table
and a plot of throughput and efficiency against workers, written beside the runs and, with
`doc`, into a marked section of docs/scaling.md."""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from t2ray.distributed.loop import check_device
from t2ray.distributed.train import ran_with
from t2ray.eval.results import invocation, replace_section

RECIPES = ("svf-rl", "t2l-sft")
console = Console()


@dataclass
class ScalingConfig:
    out: str = "runs/scaling"
    model: str = "tiny"
    recipes: list[str] = field(default_factory=lambda: list(RECIPES))
    workers: list[int] = field(default_factory=lambda: [1, 2])
    zero: list[int | None] = field(default_factory=lambda: [None, 2, 3])  # None: no DeepSpeed
    steps: int = 6
    warmup: int = 1  # first steps left out of the medians (graph warm-up, allocator)
    svf_task: str = "math"
    prompts_per_step: int = 8  # SVF-RL, over all workers
    tasks_per_batch: int = 8  # T2L, over all workers
    svd_cache: str | None = None  # SVF-RL: a decomposition of `model` (default: <out>/svd)
    device: str = "cpu"  # "cuda": one GPU per worker (not yet run on one; docs/scaling.md)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ScalingConfig":
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))

    def validate(self) -> None:
        unknown = [r for r in self.recipes if r not in RECIPES]
        if unknown:
            raise ValueError(f"unknown recipes {unknown}; choose from {RECIPES}")
        if not self.workers or min(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        bad_zero = [z for z in self.zero if z not in (None, 0, 1, 2, 3)]
        if bad_zero:
            raise ValueError(f"zero stages must be none or 0-3, got {bad_zero}")
        check_device(self.device)
        if self.device == "cuda" and 3 in self.zero and "svf-rl" in self.recipes:
            raise ValueError("SVF-RL under ZeRO-3 cannot run on cuda yet (its lock-step "
                             "rollouts build their batches on the CPU): leave 3 out of zero")
        if self.steps <= self.warmup:
            raise ValueError(f"steps ({self.steps}) must exceed warmup ({self.warmup})")
        for name, batch in (("prompts_per_step", self.prompts_per_step),
                            ("tasks_per_batch", self.tasks_per_batch)):
            if any(batch % w for w in self.workers):
                raise ValueError(f"{name} {batch} must divide by every worker count "
                                 f"{self.workers} (each point keeps the global batch)")


def run_name(recipe: str, workers: int, zero: int | None) -> str:
    return f"{recipe}-w{workers}-{'ddp' if zero is None else f'zero{zero}'}"


def _svf_config(cfg: ScalingConfig, out: Path, zero: int | None, svd_cache: str):
    from t2ray.rl.trainer import TrainConfig

    return TrainConfig(out=str(out), model=cfg.model, task=cfg.svf_task, svd_cache=svd_cache,
                       steps=cfg.steps, prompts_per_step=cfg.prompts_per_step,
                       eval_every=cfg.steps, eval_n=4, checkpoint_every=cfg.steps,
                       deepspeed_stage=zero, device=cfg.device)


def _t2l_config(cfg: ScalingConfig, out: Path, zero: int | None, workers: int):
    from t2ray.t2l.train import T2LTrainConfig

    return T2LTrainConfig(out=str(out), model=cfg.model, steps=cfg.steps,
                          tasks_per_batch=cfg.tasks_per_batch // workers,
                          eval_every=cfg.steps, eval_tasks=1, eval_n=2,
                          checkpoint_every=cfg.steps, divergence_factor=0.0,
                          deepspeed_stage=zero, device=cfg.device)


def run_point(cfg: ScalingConfig, recipe: str, workers: int, zero: int | None,
              svd_cache: str | None) -> dict:
    """One training run; its rank-0 step history with the point's settings."""
    out = Path(cfg.out) / run_name(recipe, workers, zero)
    config = (_svf_config(cfg, out, zero, svd_cache) if recipe == "svf-rl"
              else _t2l_config(cfg, out, zero, workers))
    history_file = out / "metrics.jsonl"
    if history_file.exists() and ran_with(out, config):
        # a finished point with these very settings is kept: a stopped sweep resumes
        history = [json.loads(line) for line in history_file.read_text().splitlines()]
    elif recipe == "svf-rl":
        from t2ray.rl.launch import train

        history = train(config, workers, max_failures=0)["history"]
    else:
        from t2ray.t2l.train import train_t2l

        history = train_t2l(config, workers, max_failures=0)["history"]
    return {"run": out.name, "recipe": recipe, "workers": workers, "zero": zero,
            "history": history}


def summarise(point: dict, warmup: int) -> dict:
    """Medians over the measured steps of one run."""
    steps = [h for h in point["history"] if "step_time_s" in h][warmup:]
    if not steps:
        raise ValueError(f"{point['run']}: no measured steps after {warmup} warm-up steps")
    median = lambda key: statistics.median(h[key] for h in steps)  # noqa: E731
    return {k: point[k] for k in ("run", "recipe", "workers", "zero")} | {
        "steps": len(steps), "step_time_s": median("step_time_s"),
        "tokens_per_s": median("global_tokens_per_s"),
        "grad_sync_bytes": steps[-1]["grad_sync_bytes"],
        "max_rank_memory_bytes": max(h["max_rank_memory_bytes"] for h in steps)}


def with_efficiency(rows: list[dict]) -> list[dict]:
    """Speed-up over the same recipe and ZeRO stage at the fewest workers, and efficiency:
    speed-up / (workers / fewest workers); 1.0 is linear scaling."""
    for row in rows:
        same = [r for r in rows if (r["recipe"], r["zero"]) == (row["recipe"], row["zero"])]
        ref = min(same, key=lambda r: r["workers"])
        row["speedup"] = row["tokens_per_s"] / ref["tokens_per_s"]
        row["efficiency"] = row["speedup"] / (row["workers"] / ref["workers"])
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | recipe | workers | ZeRO | step (s) | tokens/s | speed-up | efficiency | "
             "grad sync / step | peak memory per rank |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['recipe']} | {r['workers']} | "
            f"{'none' if r['zero'] is None else r['zero']} | {r['step_time_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} | "
            f"{_bytes(r['grad_sync_bytes'])} | {_bytes(r['max_rank_memory_bytes'])} |")
    return "\n".join(lines) + "\n"


def _bytes(n: int) -> str:
    if n == 0:
        return "0"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and efficiency against workers, one line per recipe and ZeRO stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in dict.fromkeys((r["recipe"], r["zero"]) for r in rows):
        line = sorted((r for r in rows if (r["recipe"], r["zero"]) == key),
                      key=lambda r: r["workers"])
        label = f"{key[0]}, {'no ZeRO' if key[1] is None else f'ZeRO-{key[1]}'}"
        workers = [r["workers"] for r in line]
        left.plot(workers, [r["tokens_per_s"] for r in line], "o-", label=label)
        right.plot(workers, [r["efficiency"] for r in line], "o-", label=label)
    every = sorted({r["workers"] for r in rows})
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax, title in ((left, "throughput (tokens/s, all ranks)"),
                      (right, "efficiency (speed-up / workers)")):
        ax.set_xticks(every)
        ax.set_xlabel("Ray Train workers")
        ax.set_title(title)
    right.set_ylim(0, max(1.2, *(r["efficiency"] for r in rows)) * 1.05)
    left.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_scaling(cfg: ScalingConfig, doc: Path | None = None) -> list[dict]:
    """Every (recipe, workers, ZeRO) point in turn, then the table and plot."""
    cfg.validate()
    out = Path(cfg.out).resolve()
    cfg.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    svd_cache = None
    if "svf-rl" in cfg.recipes:
        from t2ray.svf.ops import decompose_model

        svd_cache = str(decompose_model(cfg.model, "mlp", cfg.svd_cache or out / "svd").root)
    grid = [(r, w, z) for r in cfg.recipes for z in cfg.zero for w in sorted(cfg.workers)]
    rows = []
    for i, (recipe, workers, zero) in enumerate(grid, 1):
        console.rule(f"[bold]scaling {i}/{len(grid)}: {run_name(recipe, workers, zero)}")
        rows.append(summarise(run_point(cfg, recipe, workers, zero, svd_cache), cfg.warmup))
    rows = with_efficiency(rows)
    table = markdown_table(rows)
    (out / "scaling.json").write_text(json.dumps({"config": asdict(cfg), "command": invocation(),
                                                  "rows": rows}, indent=1) + "\n")
    (out / "scaling.md").write_text(table)
    plot(rows, out / "scaling.png")
    console.print(table, soft_wrap=True, highlight=False)
    console.print(f"runs, scaling.json, scaling.md and scaling.png in {out}")
    if doc is not None:
        image = doc.parent / "scaling_workers.png"
        shutil.copyfile(out / "scaling.png", image)
        replace_section(doc, "scaling-runs", f"`{invocation()}`\n\n{cfg.steps} steps per run, "
                        f"medians over the last {cfg.steps - cfg.warmup}; model {cfg.model}; "
                        f"global batch: {cfg.prompts_per_step} prompts (SVF-RL), "
                        f"{cfg.tasks_per_batch} tasks (T2L).\n\n{table}\n"
                        f"![throughput and efficiency against workers]({image.name})")
        console.print(f"wrote the table into {doc} and the plot to {image}")
    return rows
