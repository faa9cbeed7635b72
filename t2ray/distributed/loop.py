"""The one training skeleton, in-process or inside a Ray Train worker.

A recipe (RL, T2L, pretraining) builds its components once from its typed config - the module
that trains, optimiser, schedule, a `step` that returns the loss of one batch, a `validate` -
into a `Trainable`; `train_steps` then steps, reports and checkpoints without knowing what it
trains. Also here: the rank, prompt + completion batches, the completion-only next-token loss,
the learning-rate schedule, one optimiser step (plain all-reduce or DeepSpeed), and checkpoints
of the trainable tensors through `ray.train.report` with resume from the latest one.

Only parameters with requires_grad are checkpointed (z, a LoRA, a hypernetwork); frozen base
weights are rebuilt from the model files."""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from t2ray.distributed.metrics import StepMeter

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, steps: int, kind: str = "cosine", warmup: int = 0,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at `step`: linear warmup over `warmup` steps, then
    a cosine or a straight line from 1 to `min_ratio` at `steps` (or constant 1)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def scheduler(opt: torch.optim.Optimizer, steps: int, kind: str = "cosine", warmup: int = 0,
              min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, kind, warmup, min_ratio))


@dataclass
class Trainable:
    """What a recipe builds once and `train_steps` runs.

    `step(i)` returns (loss, stats) for step i; a "tokens" stat becomes `tokens_per_s` (this
    rank) and `global_tokens_per_s` (all ranks) over the whole step, optimiser included
    (distributed.metrics adds the step's time, gradient-sync bytes and memory). `validate()`
    returns metrics read on validation data.
    """

    module: torch.nn.Module  # its requires_grad parameters train and are checkpointed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: Callable[[int], tuple[torch.Tensor, dict]]
    validate: Callable[[], dict]
    ds_engine: object | None = None  # DeepSpeed engine wrapping `module`, if any
    save: Callable[[list[dict]], None] = lambda history: None  # rank 0, after the last step
    close: Callable[[], None] = lambda: None  # every rank, at the end, also after a failure


@dataclass
class DivergenceGuard:
    """A step whose loss is not finite, or above `factor` times the median of the last `window`
    losses, is a divergence: the run goes back to its last good state (kept in memory at every
    checkpoint step), halves its learning rate, records the restart in its history and goes on;
    after `max_restarts` it stops with an error instead of shipping a diverged model."""

    factor: float = 10.0
    window: int = 20
    max_restarts: int = 2

    def diverged(self, loss: float, recent: list[float]) -> bool:
        if not math.isfinite(loss):
            return True
        if len(recent) < self.window:
            return False
        median = sorted(recent[-self.window:])[self.window // 2]
        return loss > self.factor * max(median, 1e-8)


def run_recipe(cfg, build: Callable[[object], Trainable], desc: str,
               guard: DivergenceGuard | None = None) -> list[dict]:
    """A recipe from its typed config (with steps, grad_clip, eval_every, checkpoint_every,
    threads and validate()): build once, run the loop, save on rank 0; the history."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    parts = build(cfg)
    try:
        history = train_steps(parts, cfg.steps, cfg.grad_clip, cfg.eval_every,
                              cfg.checkpoint_every, desc, guard)
        if distributed()[0] == 0:
            parts.save(history)
    finally:
        parts.close()
    return history


def train_steps(parts: Trainable, steps: int, grad_clip: float, eval_every: int,
                checkpoint_every: int, desc: str, guard: DivergenceGuard | None = None
                ) -> list[dict]:
    """Run steps [resumed step, steps): step, optimiser, validation, report, checkpoint. The
    metrics of every step go to Ray Train (the dashboard); the console shows a progress bar.
    With a `guard` (not under DeepSpeed) a diverging run restarts from its last good state."""
    from tqdm import tqdm

    rank, world = distributed()
    if guard is not None and (parts.ds_engine is not None or world > 1):
        raise ValueError("the divergence guard restores in-process state: one worker, no "
                         "DeepSpeed")
    params = [p for p in parts.module.parameters() if p.requires_grad]
    meter = StepMeter(params, rank, world, run_name())
    start = resume(parts.module, parts.optimizer, parts.scheduler, parts.ds_engine)
    history: list[dict] = []
    good = _snapshot(parts, start) if guard else None
    restarts, base_lrs = 0, list(parts.scheduler.base_lrs)
    bar = tqdm(total=steps, desc=desc, initial=start, disable=rank != 0, mininterval=2)
    step = start
    while step < steps:
        t0 = time.perf_counter()
        loss, stats = parts.step(step)
        value = float(loss.detach())
        if guard and guard.diverged(value, [h["loss"] for h in history if "loss" in h]):
            restarts += 1
            if restarts > guard.max_restarts:
                raise RuntimeError(f"{desc} diverged at step {step + 1} (loss {value:.4g}) "
                                   f"after {guard.max_restarts} restarts")
            history = [h for h in history if h["step"] <= good["step"]]
            history.append({"step": step + 1, "diverged_loss": value,
                            "restored_step": good["step"], "restart": restarts})
            _restore(parts, good, [lr * 0.5 ** restarts for lr in base_lrs])
            bar.n = step = good["step"]
            continue
        grad_norm = optimizer_step(loss, params, parts.optimizer, parts.scheduler, grad_clip,
                                   world, parts.ds_engine)
        meter.measure(stats, time.perf_counter() - t0, stats.pop("tokens", None))
        stats.update(step=step + 1, grad_norm=grad_norm, lr=parts.scheduler.get_last_lr()[0])
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            stats.update(parts.validate())
        history.append(stats)
        bar.set_postfix({k: round(v, 4) for k, v in stats.items()
                         if k in ("loss", "reward_mean", "val_accuracy")
                         and isinstance(v, float)}, refresh=False)
        report(stats, parts.module, parts.optimizer, parts.scheduler, step + 1,
               checkpoint_every, steps, rank, parts.ds_engine)
        step += 1
        bar.update(1)
        if guard and step % checkpoint_every == 0:
            good = _snapshot(parts, step)
    bar.close()
    return history


def _snapshot(parts: Trainable, step: int) -> dict:
    """The trainable tensors, optimiser and schedule at `step`, copied in memory."""
    import copy

    return {"step": step, "trainable": {k: v.detach().clone()
                                        for k, v in trainable_state(parts.module).items()},
            "optimizer": copy.deepcopy(parts.optimizer.state_dict()),
            "scheduler": parts.scheduler.state_dict()}


def _restore(parts: Trainable, good: dict, base_lrs: list[float]) -> None:
    """Back to a snapshot, going on with the schedule (a LambdaLR) over new base rates."""
    import copy

    parts.module.load_state_dict(good["trainable"], strict=False)
    parts.optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
    sched = parts.scheduler
    sched.load_state_dict(good["scheduler"])
    sched.base_lrs = list(base_lrs)
    for group, base, factor in zip(parts.optimizer.param_groups, base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in parts.optimizer.param_groups]

DS_TAG = "t2ray"  # DeepSpeed checkpoint tag inside each Ray Train checkpoint


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context()
    except (ImportError, RuntimeError):  # RuntimeError: not inside a Ray Train worker
        return False
    return True


DEVICES = ("cpu", "cuda")


def check_device(name: str) -> None:
    """A config's `device` field: one of DEVICES (every config that has one checks it here)."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {name!r}")


def train_device(name: str) -> torch.device:
    """Where a training worker computes: "cpu", or "cuda" for its own GPU (the one Ray Train
    assigned it, which it made current; cuda:0 in-process)."""
    check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this worker sees no GPU")
    return torch.device("cuda", torch.cuda.current_device())


def run_name() -> str | None:
    """The Ray Train run this worker belongs to (None outside Ray Train)."""
    if not in_ray_train():
        return None
    import ray.train

    return ray.train.get_context().get_experiment_name()


def resuming() -> bool:
    """Whether this run continues from a Ray Train checkpoint (a restarted worker)."""
    if not in_ray_train():
        return False
    import ray.train

    return ray.train.get_checkpoint() is not None


def optimizer_step(loss, params, opt, sched, grad_clip, world, ds_engine) -> float:
    """Backward, gradient all-reduce (mean over ranks), clipping, step; the gradient norm."""
    if ds_engine is not None:
        ds_engine.backward(loss)
        ds_engine.step()
        sched.step()
        return float(ds_engine.get_global_grad_norm() or 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if world > 1:
        import torch.distributed as dist

        for p in params:
            dist.all_reduce(p.grad)
            p.grad /= world
    norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    opt.step()
    sched.step()
    return norm


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k in names}


def resume(module, opt, sched, ds_engine=None) -> int:
    """Continue from the latest Ray Train checkpoint, if there is one; the step to start at."""
    if not in_ray_train():
        return 0
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        if ds_engine is not None:  # every rank restores its own optimizer partition
            _, client = ds_engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False)
            sched.load_state_dict(client["scheduler"])
            return int(client["step"])
        state = torch.load(Path(d) / "state.pt", weights_only=True)
    module.load_state_dict(state["trainable"], strict=False)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])


def report(stats: dict, module, opt, sched, step: int, checkpoint_every: int, total_steps: int,
           rank: int, ds_engine=None) -> None:
    """Metrics every step to Ray Train (the dashboard shows them); a checkpoint every few steps.

    Without DeepSpeed rank 0 saves the trainable weights and optimizer state; with DeepSpeed
    every rank saves its optimizer partition and Ray Train gathers them into one checkpoint.
    """
    printable = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
    if not in_ray_train():
        return
    import ray.train
    from ray.train import Checkpoint

    if step % checkpoint_every and step != total_steps:
        ray.train.report(printable)
        return
    with tempfile.TemporaryDirectory() as d:
        if ds_engine is not None:
            ds_engine.save_checkpoint(d, tag=DS_TAG, exclude_frozen_parameters=True,
                                      client_state={"step": step,
                                                    "scheduler": sched.state_dict()})
            ray.train.report(printable, checkpoint=Checkpoint.from_directory(d))
            return
        if rank == 0:
            torch.save({"trainable": trainable_state(module), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "step": step}, Path(d) / "state.pt")
        ray.train.report(printable, checkpoint=Checkpoint.from_directory(d) if rank == 0
                         else None)


def save_history(history: list[dict], out: Path, png_name: str, key: str, title: str) -> None:
    """metrics.jsonl (one row per step) and a curve of `key` with validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rows = [h for h in history if key in h]  # restart records carry no loss
    ax.plot([h["step"] for h in rows], [h[key] for h in rows], label=f"train {key}")
    val = [(h["step"], h["val_accuracy"]) for h in history
           if isinstance(h.get("val_accuracy"), float)]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="tab:orange", label="validation accuracy")
        ax2.set_ylabel("validation accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / png_name, dpi=120)
    plt.close(fig)


def completion_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                     device: torch.device | str = "cpu"):
    """Right-padded prompt + completion ids, attention mask and completion mask, on `device`."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        comp[i, len(p) : len(p) + len(c)] = 1
    return ids.to(device), attn.to(device), comp.to(device)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor,
             completion_mask: torch.Tensor, label_smoothing: float = 0.0,
             per_example: bool = False) -> torch.Tensor:
    """Next-token loss on reference completions only (the paper's SFT ablation), optionally
    label-smoothed (T2L's reference trains with 0.1). The mean runs over the batch's completion
    tokens, or with `per_example` over each row's own tokens first and then over rows, so that
    a task with long answers does not outweigh one with short answers."""
    mask = completion_mask[:, 1:].float()
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:],
                          reduction="none", label_smoothing=label_smoothing)
    if per_example:
        return ((nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean()
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)
