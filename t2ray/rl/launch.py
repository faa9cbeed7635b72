"""`t2ray svf train` / `t2ray lora train` / jobs/train_svf.py: one function behind all three."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml
from rich.console import Console

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
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    console.print("[bold]train config[/bold]", asdict(cfg), {"workers": workers})
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    if workers == 0:
        return train_loop(asdict(cfg))
    import ray

    from t2ray.distributed.train import run_on_ray

    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS (e.g. under `ray job submit`) or starts a local Ray
    cfg.threads = max(1, cfg.threads // workers) if not use_gpu else cfg.threads
    return run_on_ray(train_loop, asdict(cfg), workers, name=out.name,
                      storage_path=out / "ray_train", use_gpu=use_gpu,
                      cpus_per_worker=1.0, max_failures=max_failures)
