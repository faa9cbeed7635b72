"""The seen-task table (the paper's Table 1): base / LoRA-RL / LoRA-SFT / SVF-RL / SVF-SFT.

Each method is trained per task and seed on the train split (progress read on validation), then
scored once on the test split; rows give mean +- sd over seeds, the parameter count, an exact
McNemar test against the base model on the same test items (seed 0), and 95% intervals of the
mean and of its difference to the base that resample the items' contents with every seed's
verdicts on them; the per-item verdicts go to docs/scores/<table>.jsonl.gz.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from t2ray.distributed.train import ran_with
from t2ray.engines.base import adapter_fingerprint
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import EvalRow, evaluate_task, interval_fields
from t2ray.eval.results import (
    ROW_COLUMNS,
    ResultRow,
    invocation,
    kept_json,
    merge_results,
    pivot_table,
    row_table,
    verdict_entry,
    write_verdicts,
)
from t2ray.eval.stats import mcnemar_exact, mean_sd
from t2ray.lora.peft_io import import_peft
from t2ray.models import load_model
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertVector
from t2ray.svf.ops import decompose_model
from t2ray.tasks import get_task

METHODS = {"svf-rl": ("svf", "rl"), "svf-sft": ("svf", "sft"), "lora-rl": ("lora", "rl"),
           "lora-sft": ("lora", "sft")}
console = Console()


def trained_adapter(run_dir: Path, policy: str, cache: SVDCache | None):
    """The expert or LoRA a training run saved."""
    if policy == "svf":
        return ExpertVector.load(run_dir / "expert", expect_fingerprint=cache.fingerprint)
    return import_peft(run_dir / "lora", expect_fingerprint=cache.fingerprint)


def seen_table(base_cfg, tasks: list[str], seeds: list[int], methods: list[str], out: Path,
               workers: int = 0, n_test: int | None = None, results_json: Path | None = None,
               method_overrides: dict[str, dict] | None = None,
               task_overrides: dict[str, dict[str, dict]] | None = None,
               table: str = "seen") -> list[dict]:
    """Train every (method, task, seed), evaluate on test, write rows; returns the rows.

    `method_overrides` maps a method to TrainConfig fields of its own (a LoRA wants another
    learning rate than z); `task_overrides[task][method]` refines them for one task. Both are
    chosen on validation (`tune_on_validation`)."""
    from t2ray.rl.launch import train

    command = invocation()
    model, tok = load_model(base_cfg.model)
    cache = (SVDCache(base_cfg.svd_cache) if base_cfg.svd_cache
             else decompose_model(base_cfg.model, "mlp"))
    engine = HFEngine(model, tok, svd_cache=cache, name=base_cfg.model)
    rows, verdicts = [], []
    for task_name in tasks:
        task = get_task(task_name)
        keys = [k for k, _ in task.keyed_examples("test", n_test)]
        base = _cached_eval(out / task_name / "base_test_eval.json", engine, None, task, n_test)
        rows.append(ResultRow(table, task_name, "base", round(100 * base.accuracy, 2), 0.0, 1,
                              0, command, n=base.n, extra=_intervals([base], keys)))
        verdicts.append(verdict_entry(task_name, "base", "test", base.item_correct))
        for method in methods:
            policy, objective = METHODS[method]
            accs, evals = [], []
            for seed in seeds:
                run_dir = out / task_name / method / f"seed{seed}"
                cfg = replace(base_cfg, out=str(run_dir), task=task_name, policy=policy,
                              objective=objective, seed=seed,
                              **{**(method_overrides or {}).get(method, {}),
                                 **(task_overrides or {}).get(task_name, {}).get(method, {})})
                eval_file = run_dir / "test_eval.json"
                if not (eval_file.exists() and ran_with(run_dir, cfg)):  # changed settings rerun
                    train(cfg, workers=workers)
                adapter = trained_adapter(run_dir, policy, cache)
                params = adapter.num_params
                row = _cached_eval(eval_file, engine, adapter, task, n_test)
                accs.append(100 * row.accuracy)
                evals.append(row)
                verdicts.append(verdict_entry(task_name, method, "test", row.item_correct,
                                              seed))
            mean, sd = mean_sd(accs)
            rows.append(ResultRow(
                table, task_name, method, round(mean, 2), round(sd, 2), len(seeds), params,
                command, n=evals[0].n, extra={
                    "seeds": [round(a, 2) for a in accs], **_intervals(evals, keys, base),
                    "mcnemar_p_vs_base_seed0": mcnemar_exact(evals[0].item_correct,
                                                             base.item_correct)}))
    row_table(rows, SEEN_COLUMNS, "seen tasks, test split", console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(pivot_table(rows))
    if results_json:  # the rows, and beside them the per-item verdicts behind them
        merge_results(results_json, rows)
        write_verdicts(Path(results_json).parent / "scores" / f"{table}.jsonl.gz", table,
                       verdicts, command)
    return rows


def _intervals(evals: list[EvalRow], keys: list[str], base: EvalRow | None = None) -> dict:
    return interval_fields([e.item_correct for e in evals], keys,
                           None if base is None else base.item_correct)


def _cached_eval(path: Path, engine, adapter, task, n_test: int | None) -> EvalRow:
    """A finished run's test evaluation is kept next to it, so a long sweep resumes where it
    stopped instead of starting over; it is reused only for the same base, adapter and items."""
    def evaluate() -> dict:
        with engine.adapted(adapter):
            row = evaluate_task(engine, task, "test", n_test)
        return {**row.as_dict(), "item_correct": list(row.item_correct)}

    key = {"base": engine.describe()["base_fingerprint"], "adapter": adapter_fingerprint(adapter),
           "items": task.items_fingerprint("test", n_test)}
    d = kept_json(path, key, evaluate)
    return EvalRow(**{**d, "item_correct": tuple(d["item_correct"])})


def _p_cell(r: ResultRow) -> str:
    p = r.get("mcnemar_p_vs_base_seed0")
    return "" if p is None else f"{p:.3g}"


SEEN_COLUMNS = {**ROW_COLUMNS, "params": lambda r: f"{r.params:,}", "p vs base": _p_cell}


def sweep_config(path: Path | None, model: str | None = None, steps: int | None = None,
                 method: str | None = None, **fields) -> tuple:
    """A sweep's YAML (configs/seen.yaml): TrainConfig fields shared by every run, per-method
    overrides under `methods:` and per-task ones under `tasks: {task: {method: {...}}}`.

    Returns (TrainConfig, method overrides, task overrides); with `method`, that method's
    overrides are already applied (what a tuning run of one method starts from)."""
    import yaml

    from t2ray.rl.trainer import TrainConfig

    raw = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    overrides = raw.pop("methods", {}) or {}
    task_overrides = raw.pop("tasks", {}) or {}
    if method is not None:
        raw.update(overrides.get(method, {}))
    cfg = TrainConfig(**{**raw, **fields})
    if model is not None:
        cfg.model = model
    if steps is not None:
        cfg.steps = steps
    return cfg, overrides, task_overrides


def parse_grid(cfg, specs: list[str]) -> dict[str, list]:
    """`FIELD=v1,v2,...` specs into {field: values}, each value of the field's own type (a
    field of `cfg`'s dataclass; booleans as true/false). Values that hold commas themselves
    (`kl_form`) are given as a YAML list: `kl_form=["ref||pi, sequence-sum"]`."""
    import yaml

    grid = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        if not hasattr(cfg, key) or not values:
            raise ValueError(f"bad grid {spec!r}: expected FIELD=v1,v2 with a field of "
                             f"{type(cfg).__name__}")
        listed = yaml.safe_load(values) if values.startswith("[") else values.split(",")
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"bad grid {spec!r}: expected a non-empty YAML list after '='")
        grid[key] = [_typed(getattr(cfg, key), str(v), spec) for v in listed]
    return grid


def grid_label(fields: dict) -> str:
    """A grid point's run directory name: `lr0.003_kl_coef0.1`, any character of a value that
    does not belong in a path turned into '-' (`kl_formref-pi-sequence-sum`)."""
    return "_".join(f"{k}{re.sub(r'[^A-Za-z0-9.+-]+', '-', str(v))}"
                    for k, v in fields.items()) or "default"


def _typed(like, value: str, spec: str):
    if isinstance(like, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"bad grid {spec!r}: {value!r} is not true or false")
        return value.lower() == "true"
    return type(like)(value)


def _settings(point: dict) -> dict:
    return {k: v for k, v in point.items()
            if k not in ("task", "method", "val_accuracy", "selected_step", "val_curve")}


def tune_on_validation(base_cfg, task_name: str, method: str, grid: dict[str, list],
                       out: Path, seed: int = 0, workers: int = 0) -> dict:
    """Train `method` on `task_name` for every point of `grid` and pick the point whose shipped
    adapter (the run's best validation candidate, the base itself included) reads best on
    validation. The test split is never read; runs resume like the sweep."""
    from itertools import product

    from t2ray.rl.launch import train
    from t2ray.rl.trainer import Selection

    policy, objective = METHODS[method]
    keys = list(grid)
    points = []
    for values in product(*(grid[k] for k in keys)):
        fields = dict(zip(keys, values))
        run_dir = out / task_name / method / grid_label(fields)
        metrics = run_dir / "metrics.jsonl"
        cfg = replace(base_cfg, out=str(run_dir), task=task_name, policy=policy,
                      objective=objective, seed=seed, **fields)
        if not ((run_dir / "done").exists() and ran_with(run_dir, cfg)):
            train(cfg, workers=workers)
            (run_dir / "done").touch()
        history = [json.loads(line) for line in metrics.read_text().splitlines()]
        shipped = Selection.load(run_dir / "selection.pt")
        val = [shipped.base_val_accuracy] + [h["val_accuracy"] for h in history
                                             if "val_accuracy" in h]
        points.append({"task": task_name, "method": method, **fields,
                       "val_accuracy": shipped.val_accuracy, "selected_step": shipped.step,
                       "val_curve": val})
    # Earlier grids on the same task and method stay in the record (and in the choice).
    record = out / task_name / method / "tuning.json"
    fresh = [_settings(p) for p in points]
    if record.exists():
        points = [p for p in json.loads(record.read_text())["points"]
                  if _settings(p) not in fresh] + points
    best = max(points, key=lambda p: p["val_accuracy"])
    summary = {"task": task_name, "method": method, "seed": seed, "points": points,
               "selected": _settings(best)}
    record.write_text(json.dumps(summary, indent=1))
    table = Table("settings", "val accuracy (shipped)", "shipped step", "val curve (step 0: base)",
                  title=f"{method} on {task_name}: validation only, seed {seed}")
    for p in points:
        table.add_row(str(_settings(p)), f"{100 * p['val_accuracy']:.1f}",
                      str(p.get("selected_step", "final")),
                      " ".join(f"{100 * v:.0f}" for v in p["val_curve"]))
    console.print(table)
    console.print(f"selected: {summary['selected']}")
    return summary
