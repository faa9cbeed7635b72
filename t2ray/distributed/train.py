"""Run a training function on N Ray Train workers (CPU + gloo here, GPUs + NCCL on a cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def run_on_ray(train_fn: Callable[[dict], dict], config: dict, workers: int, name: str,
               storage_path: str | Path, use_gpu: bool = False, cpus_per_worker: float = 1.0,
               max_failures: int = 0):
    """TorchTrainer over `train_fn`; resumes from the run's latest checkpoint after a failure.

    Returns the rank-0 worker's return value (Ray Train V2 keeps only the last checkpoint's
    metrics in `Result.metrics`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError("workers must be >= 1")
    trainer = TorchTrainer(
        train_fn, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit().return_value


def launch(train_fn: Callable[[dict], dict], cfg, workers: int, use_gpu: bool = False,
           max_failures: int = 1) -> dict:
    """Write `cfg` (a dataclass with `out` and `threads`) beside its outputs, then run `train_fn`
    in this process (workers=0) or on Ray Train with the threads split between the workers; a
    config whose `device` is "cuda" gets one GPU per worker."""
    from dataclasses import asdict

    import yaml

    use_gpu = use_gpu or getattr(cfg, "device", "cpu") == "cuda"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    if workers == 0:
        result = train_fn(asdict(cfg))
    else:
        from t2ray.distributed.ray_env import ensure_ray

        ensure_ray(quiet=False)
        cfg.threads = max(1, cfg.threads // workers) if not use_gpu else cfg.threads
        result = run_on_ray(train_fn, asdict(cfg), workers, name=out.name,
                            storage_path=out / "ray_train", use_gpu=use_gpu,
                            cpus_per_worker=1.0, max_failures=max_failures)
    _summary(result.get("history") or [], out)
    return result


PATH_FIELDS = ("out", "svd_cache", "library")  # recorded resolved (trainers resolve them first)


def ran_with(out: Path | str, cfg) -> bool:
    """Whether `out` holds a run that `launch` started with exactly `cfg` (its recorded
    train_config.yaml, paths compared resolved): sweeps reuse a finished run only then, so
    changed settings rerun. A field the record lacks was added after the run and counts at its
    default (new fields default to the behaviour runs had before them)."""
    from dataclasses import MISSING, asdict, fields

    import yaml

    def resolved(values: dict) -> dict:
        return {k: str(Path(v).resolve()) if k in PATH_FIELDS and v else v
                for k, v in values.items()}

    recorded = Path(out) / "train_config.yaml"
    if not recorded.exists():
        return False
    defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                for f in fields(cfg)
                if f.default is not MISSING or f.default_factory is not MISSING}
    return resolved({**defaults, **yaml.safe_load(recorded.read_text())}) == resolved(asdict(cfg))


SUMMARY_KEYS = ("step", "loss", "reward_mean", "val_accuracy", "grad_norm")


def _summary(history: list[dict], out: Path) -> None:
    """The end of a run for people: the last step's main metrics and where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if history:
        last = history[-1]
        table = Table(*(k for k in SUMMARY_KEYS if k in last), title="last step")
        table.add_row(*(f"{last[k]:.4g}" if isinstance(last[k], float) else str(last[k])
                        for k in SUMMARY_KEYS if k in last))
        console.print(table)
    console.print(f"outputs in {out} (metrics.jsonl has every step)")
