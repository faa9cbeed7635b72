"""The seen-task table (the paper's Table 1): base / LoRA-RL / LoRA-SFT / SVF-RL / SVF-SFT.

Each method is trained per task and seed on the train split (progress read on validation), then
scored once on the test split; rows give mean +- sd over seeds, the parameter count, and an exact
McNemar test against the base model on the same test items (seed 0).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import EvalRow, evaluate_task
from t2ray.eval.report import invocation, merge_results
from t2ray.eval.stats import mcnemar_exact, mean_sd
from t2ray.lora.peft_io import import_peft
from t2ray.models import load_model
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertVector
from t2ray.tasks import get_task

METHODS = {"svf-rl": ("svf", "rl"), "svf-sft": ("svf", "sft"), "lora-rl": ("lora", "rl"),
           "lora-sft": ("lora", "sft")}
console = Console()


def _adapted_engine(model_name: str, run_dir: Path, policy: str, svd_cache: str | None):
    model, tok = load_model(model_name)
    if policy == "svf":
        cache = SVDCache(svd_cache)
        engine = HFEngine(model, tok, svd_cache=cache)
        expert = ExpertVector.load(run_dir / "expert", expect_fingerprint=cache.fingerprint)
        engine.set_expert(expert)
        return engine, expert.num_params
    engine = HFEngine(model, tok)
    lora = import_peft(run_dir / "lora")
    engine.set_lora(lora)
    return engine, lora.num_params


def seen_table(base_cfg, tasks: list[str], seeds: list[int], methods: list[str], out: Path,
               workers: int = 0, n_test: int | None = None, results_json: Path | None = None,
               method_overrides: dict[str, dict] | None = None,
               task_overrides: dict[str, dict[str, dict]] | None = None) -> list[dict]:
    """Train every (method, task, seed), evaluate on test, write rows; returns the rows.

    `method_overrides` maps a method to TrainConfig fields of its own (a LoRA wants another
    learning rate than z); `task_overrides[task][method]` refines them for one task. Both are
    chosen on validation (`tune_on_validation`)."""
    from t2ray.rl.launch import train

    command = invocation()
    model, tok = load_model(base_cfg.model)
    base_engine = HFEngine(model, tok)
    rows = []
    for task_name in tasks:
        task = get_task(task_name)
        base = _cached_eval(out / task_name / "base_test_eval.json", base_engine, task, n_test)
        rows.append({"table": "seen", "task": task_name, "method": "base", "metric": "accuracy",
                     "mean": round(100 * base.accuracy, 2), "sd": 0.0, "n_seeds": 1,
                     "params": 0, "command": command, "n": base.n})
        for method in methods:
            policy, objective = METHODS[method]
            accs, first = [], None
            for seed in seeds:
                run_dir = out / task_name / method / f"seed{seed}"
                cfg = replace(base_cfg, out=str(run_dir), task=task_name, policy=policy,
                              objective=objective, seed=seed,
                              **{**(method_overrides or {}).get(method, {}),
                                 **(task_overrides or {}).get(task_name, {}).get(method, {})})
                eval_file = run_dir / "test_eval.json"
                if not eval_file.exists():
                    train(cfg, workers=workers)
                engine, params = _adapted_engine(cfg.model, run_dir, policy, cfg.svd_cache)
                row = _cached_eval(eval_file, engine, task, n_test)
                accs.append(100 * row.accuracy)
                first = first or row
            mean, sd = mean_sd(accs)
            rows.append({"table": "seen", "task": task_name, "method": method,
                         "metric": "accuracy", "mean": round(mean, 2), "sd": round(sd, 2),
                         "n_seeds": len(seeds), "params": params, "command": command,
                         "n": first.n, "seeds": [round(a, 2) for a in accs],
                         "mcnemar_p_vs_base_seed0": mcnemar_exact(first.item_correct,
                                                                  base.item_correct)})
    _print(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown_table(rows))
    if results_json:
        merge_results(results_json, rows)
    return rows


def _cached_eval(path: Path, engine, task, n_test: int | None) -> EvalRow:
    """A finished run's test evaluation is kept next to it, so a long sweep resumes where it
    stopped instead of starting over."""
    if path.exists():
        d = json.loads(path.read_text())
        console.print(f"[dim]reusing {path}[/dim]")
        return EvalRow(**{**d, "item_correct": tuple(d["item_correct"])})
    row = evaluate_task(engine, task, "test", n_test)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**row.as_dict(), "item_correct": list(row.item_correct)}))
    return row


def markdown_table(rows: list[dict]) -> str:
    """The table for docs/results.md: one row per task, one column per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    params = {r["method"]: r["params"] for r in rows}
    lines = ["| task | " + " | ".join(f"{m} ({params[m]:,} params)" if params[m] else m
                                      for m in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for m in methods:
            r = next((r for r in rows if r["task"] == task and r["method"] == m), None)
            if r is None:
                cells.append("")
                continue
            p = r.get("mcnemar_p_vs_base_seed0")
            sig = "" if p is None else f" (p={p:.2g})"
            cells.append(f"{r['mean']:.1f} +- {r['sd']:.1f}{sig}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _print(rows: list[dict]) -> None:
    table = Table("task", "method", "accuracy (mean +- sd)", "seeds", "params", "p vs base",
                  title="seen tasks, test split")
    for r in rows:
        p = r.get("mcnemar_p_vs_base_seed0")
        table.add_row(r["task"], r["method"], f"{r['mean']:.1f} +- {r['sd']:.1f}",
                      str(r["n_seeds"]), f"{r['params']:,}", "" if p is None else f"{p:.3g}")
    console.print(table)


def _settings(point: dict) -> dict:
    return {k: v for k, v in point.items()
            if k not in ("task", "method", "val_accuracy", "val_curve")}


def tune_on_validation(base_cfg, task_name: str, method: str, grid: dict[str, list],
                       out: Path, seed: int = 0, workers: int = 0) -> dict:
    """Train `method` on `task_name` for every point of `grid` and pick the point with the best
    final validation accuracy. The test split is never read; runs resume like the sweep."""
    from itertools import product

    from t2ray.rl.launch import train

    policy, objective = METHODS[method]
    keys = list(grid)
    points = []
    for values in product(*(grid[k] for k in keys)):
        fields = dict(zip(keys, values))
        label = "_".join(f"{k}{v}" for k, v in fields.items())
        run_dir = out / task_name / method / label
        metrics = run_dir / "metrics.jsonl"
        if not (run_dir / "done").exists():
            train(replace(base_cfg, out=str(run_dir), task=task_name, policy=policy,
                          objective=objective, seed=seed, **fields), workers=workers)
            (run_dir / "done").touch()
        history = [json.loads(line) for line in metrics.read_text().splitlines()]
        val = [h["val_accuracy"] for h in history if "val_accuracy" in h]
        points.append({"task": task_name, "method": method, **fields,
                       "val_accuracy": val[-1], "val_curve": val})
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
    table = Table("settings", "val accuracy (final)", "val curve",
                  title=f"{method} on {task_name}: validation only, seed {seed}")
    for p in points:
        table.add_row(str(_settings(p)), f"{100 * p['val_accuracy']:.1f}",
                      " ".join(f"{100 * v:.0f}" for v in p["val_curve"]))
    console.print(table)
    console.print(f"selected: {summary['selected']}")
    return summary
