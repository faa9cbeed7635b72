"""`t2ray svf train` / `t2ray lora train` / jobs/train_svf.py: one function behind all three."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from t2ray.distributed.train import launch
from t2ray.rl.trainer import TrainConfig, train_loop

console = Console()


def train(cfg: TrainConfig, workers: int = 2, use_gpu: bool = False,
          max_failures: int = 1) -> dict:
    """Train an expert (or the LoRA baseline). workers=0 runs in this process, else Ray Train."""
    if cfg.policy == "svf" and not cfg.svd_cache:
        from t2ray.svf.ops import decompose_model

        cfg.svd_cache = str(decompose_model(cfg.model, "mlp").root)
    cfg.validate()
    # Workers run in their own directories (other nodes need shared storage for these paths).
    cfg.out = str(Path(cfg.out).resolve())
    if cfg.svd_cache:
        cfg.svd_cache = str(Path(cfg.svd_cache).resolve())
    console.print("[bold]train config[/bold]", asdict(cfg), {"workers": workers})
    return launch(train_loop, cfg, workers, use_gpu, max_failures)
