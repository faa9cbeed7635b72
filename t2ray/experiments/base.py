"""Base-model evaluation behind `t2ray base eval`, jobs/eval_base.py and `t2ray demo --base-only`."""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from t2ray.engines.factory import build_engine
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import EvalRow, evaluate_task, wilson_interval
from t2ray.eval.results import markdown_accuracy_table, print_accuracy_table
from t2ray.models import TINY, load_model
from t2ray.tasks import CORE_SEEN, CORE_UNSEEN, get_task, list_tasks

console = Console()


# How an instruction family is asked: bare input, a description as the system turn (a probe
# description for seen families, so never one the model trained on), or the family's tag.
PROMPTINGS = {"base": lambda t: None,
              "base+desc": lambda t: (t.probe_descriptions or t.descriptions)[0],
              "base+tag": lambda t: t.tag}


def evaluate_base(model_name: str, task_names: list[str], split: str = "test",
                  n: int | None = None, progress: bool = True, engine: str = "hf",
                  suite: str | None = None, prefill: str = "") -> list[tuple[str, EvalRow]]:
    """(method, row) per task: `base` for every task and, for the instruction families of a
    suite with tags, also `base+desc` and `base+tag` (the latent skill behind the tag). A
    `prefill` forces every answer to start with it (a worked or a bare form, say)."""
    tasks = [get_task(t, suite) for t in task_names]  # fail on a bad name before loading
    jobs = [(m, t) for t in tasks
            for m in (PROMPTINGS if t.group == "instruct" and t.tag else ["base"])]
    with closing(build_engine(engine, model_name)) as eng:
        return [(m, evaluate_task(eng, t, split, n, system=PROMPTINGS[m](t), prefill=prefill))
                for m, t in tqdm(jobs, desc="tasks", disable=not progress)]


def evaluate_heldout_instruct(engine, split: str = "test", n: int | None = None) -> EvalRow:
    """Held-out instruction families, description in the prompt (`base+desc`), pooled."""
    t0 = time.perf_counter()
    rows = [evaluate_task(engine, t, split, n, system=t.descriptions[0])
            for t in list_tasks("instruct") if not t.seen]
    correct, total = sum(r.correct for r in rows), sum(r.n for r in rows)
    low, high = wilson_interval(correct, total)
    return EvalRow("instruct-heldout (base+desc)", split, total, correct, correct / total,
                   low, high, time.perf_counter() - t0)


def run_demo(n: int | None = None, out: Path | None = None) -> list[EvalRow]:
    """The demo at this stage: the bundled base model on the test split of every task family."""
    out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]t2ray demo[/bold]: bundled base model, test splits -> {out}")
    model, tok = load_model(TINY)
    engine = HFEngine(model, tok)
    rows = [evaluate_task(engine, get_task(name), "test", n)
            for name in tqdm(CORE_SEEN + CORE_UNSEEN, desc="core families")]
    rows.append(evaluate_heldout_instruct(engine, "test", n))
    print_accuracy_table(rows, title="bundled base model, greedy, test split")
    (out / "base_eval.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    (out / "base_eval.md").write_text(markdown_accuracy_table(rows) + "\n")
    console.print(f"wrote {out / 'base_eval.json'} and {out / 'base_eval.md'}")
    return rows


# chance of a guess per core family (percent; None: open answers)
CHANCE = {"math": None, "code": None, "reasoning": 25.0, "math-hard": None, "code-hard": None,
          "reasoning-hard": 25.0}
LATENT_AIM = (15.0, 60.0)  # a latent core skill: present but unreliable


def base_tables(rows: list[dict], table: str, oracle_table: str | None = None) -> str:
    """Markdown tables of a base-model table of a results.json (`t2ray base eval --instruct`
    rows): the core families with their intervals, and the instruction grid per cell, bare /
    with a description / with its tag, with the oracle per-task LoRA (`t2ray results t2l
    --methods task-lora`) where `oracle_table` holds it."""
    mine = {(r["task"], r["method"]): r for r in rows if r["table"] == table}
    oracle = {r["task"]: r for r in rows
              if r["table"] == oracle_table and r["method"] == "task-lora"}

    def cell(r: dict | None, ci: bool = False) -> str:
        if r is None:
            return ""
        return f"{r['mean']:.1f}" + (f" [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]" if ci else "")

    out = ["| family | seen by experts | chance (%) | n (distinct) | accuracy (%) [95% CI] "
           f"| interval | in the {LATENT_AIM[0]:.0f}-{LATENT_AIM[1]:.0f}% aim? |",
           "|---|---|---|---|---|---|---|"]
    for name in CORE_SEEN + CORE_UNSEEN:
        r = mine.get((name, "base"))
        if r is None:
            continue
        chance = CHANCE[name]
        ok = LATENT_AIM[0] <= r["mean"] <= LATENT_AIM[1]
        out.append(f"| {name} | {'yes' if name in CORE_SEEN else 'no'} | "
                   f"{'open answer' if chance is None else f'{chance:.0f}'} | {r['n']} "
                   f"({r.get('distinct')}) | {cell(r, ci=True)} | {r.get('interval', '')} | "
                   f"{'yes' if ok else '**no**'} |")
    grid = [t for t in list_tasks("instruct") if (t.name, "base") in mine]
    if not grid:
        return "\n".join(out) + "\n"
    methods = tuple(PROMPTINGS)  # bare, with a description, with its tag
    out += ["", "| cell | tag | held out | bare | with a description | with its tag [95% CI] "
            "| oracle task-lora |", "|---|---|---|---|---|---|---|"]
    for t in sorted(grid, key=lambda t: (t.seen, t.name)):
        r = [mine.get((t.name, m)) for m in methods]
        out.append(f"| {t.name} | {t.tag} | {'no' if t.seen else 'yes'} | {cell(r[0])} | "
                   f"{cell(r[1])} | {cell(r[2], ci=True)} | {cell(oracle.get(t.name))} |")
    out += ["", "| cells | n cells | bare | with a description | with its tag | oracle task-lora |",
            "|---|---|---|---|---|---|"]
    for label, group in (("held out", [t for t in grid if not t.seen]),
                         ("seen", [t for t in grid if t.seen])):
        means = []
        for m in methods:
            vals = [mine[(t.name, m)]["mean"] for t in group if (t.name, m) in mine]
            means.append(f"{sum(vals) / len(vals):.1f}" if vals else "")
        o = [oracle[t.name]["mean"] for t in group if t.name in oracle]
        means.append(f"{sum(o) / len(o):.1f} ({len(o)} cells)" if o else "")
        out.append(f"| {label} | {len(group)} | " + " | ".join(means) + " |")
    return "\n".join(out) + "\n"
