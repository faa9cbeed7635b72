"""DeepSpeed inside a Ray Train worker (Ray has already set up the process group)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).resolve().parent / "zero"  # shipped inside the package
EXTENSIONS_DIR = Path.home() / ".cache" / "t2ray" / "torch_extensions"


def deepspeed_config(stage: int, grad_clip: float, world_size: int) -> dict:
    """The shipped ZeRO config for `stage`, with batch sizes filled in for this run."""
    path = CONFIG_DIR / f"zero{stage}.json"
    if not path.exists():
        raise ValueError(f"no DeepSpeed config for ZeRO stage {stage} (looked for {path})")
    cfg = json.loads(path.read_text())
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
               train_batch_size=world_size, gradient_clipping=grad_clip)
    return cfg


def clear_stale_build_locks(root: Path, max_age_s: float = 900.0) -> list[Path]:
    """Remove JIT-build `lock` files older than `max_age_s`.

    torch's extension builder waits as long as a `lock` file exists; a build killed midway (a
    timed-out job) leaves one behind and every later DeepSpeed start then hangs. A build takes a
    minute or two here, so a lock older than 15 minutes has no live owner."""
    stale = [lock for lock in Path(root).glob("*/lock")
             if time.time() - lock.stat().st_mtime > max_age_s]
    for lock in stale:
        lock.unlink(missing_ok=True)
    return stale


def _single_process_group() -> None:
    """DeepSpeed needs a process group; Ray Train makes one per run, an in-process run
    (`--workers 0`) gets a one-rank group on a free local port: NCCL on a GPU (ZeRO's
    reduce-scatter and all-gather of CUDA tensors are not in gloo), gloo on the CPU."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0,
                            world_size=1)


def initialize(module: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: int,
               grad_clip: float, world_size: int):
    """(DeepSpeed engine, its optimizer). JIT-compiled ops are cached once per machine."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
    clear_stale_build_locks(Path(os.environ["TORCH_EXTENSIONS_DIR"]))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    _single_process_group()
    trainable = [p for p in module.parameters() if p.requires_grad]
    config = deepspeed_config(stage, grad_clip, world_size)
    if stage == 3:
        # Keep the trainable vectors (z: one per matrix, at most its rank) whole on every rank;
        # every larger tensor, the frozen base matrices above all, is partitioned.
        zero = config["zero_optimization"]
        zero["stage3_param_persistence_threshold"] = max(
            zero.get("stage3_param_persistence_threshold", 0), max(p.numel() for p in trainable))
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, model_parameters=trainable, config=config)
    return engine, ds_optimizer
