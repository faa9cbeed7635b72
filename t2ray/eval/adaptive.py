"""`t2ray eval`: accuracy per adaptation strategy and task, over seeds, with the alpha plot.

Strategies: `none` (base weights), `expert` (the task family's own expert), `lora` (the task
family's LoRA baseline), `prompt` and `classifier` (two-pass with the base model or the
classifier expert as router), `fewshot` (a CEM mixture per task found on validation shots).
Experts come from a library directory holding `<category>/` expert folders (`math`, `code`,
`reasoning`, and `route` for the classifier) and `lora/<category>/` PEFT adapters, or one such
library per seed under `seed<k>/`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from t2ray.adapt.fewshot import FewShotConfig, alpha_mixture, search_mixture, start_scorers
from t2ray.adapt.router import Router
from t2ray.adapt.two_pass import TwoPass
from t2ray.engines.hf import HFEngine, format_prompt
from t2ray.eval.harness import max_new_tokens_for
from t2ray.eval.report import invocation, merge_results
from t2ray.eval.stats import mean_sd
from t2ray.lora.peft_io import import_peft
from t2ray.models import load_model
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertLibrary
from t2ray.tasks import get_task
from t2ray.tasks.rewards import CORRECT, RewardCache

STRATEGIES = ("none", "expert", "lora", "prompt", "classifier", "fewshot")
METHOD_NAMES = {"none": "base", "expert": "svf-rl", "lora": "lora-rl", "prompt": "prompt",
                "classifier": "classifier", "fewshot": "fewshot"}
EXPERT_CATEGORIES = ("math", "code", "reasoning")
CLASSIFIER = "route"
console = Console()


@dataclass
class StrategyScore:
    task: str
    strategy: str
    seed: int
    accuracy: float
    n: int
    first_pass_share: float | None = None
    routed: dict[str, int] = field(default_factory=dict)
    alpha: list[float] | None = None


def library_for_seed(experts: Path, seed: int) -> ExpertLibrary:
    seeded = Path(experts) / f"seed{seed}"
    return ExpertLibrary(seeded if seeded.exists() else experts)


def _score(task, examples, texts, verify: RewardCache | None) -> float:
    verdicts = (verify or RewardCache(task.kind))(examples, texts)
    return sum(v == CORRECT for v in verdicts) / len(examples)


def evaluate_strategy(engine: HFEngine, lib: ExpertLibrary, task_name: str, strategy: str,
                      seed: int, n_test: int | None, fewshot: FewShotConfig | None = None,
                      model: str | None = None, storage: Path | None = None,
                      scorers: list | None = None,
                      verify: RewardCache | None = None) -> StrategyScore:
    """One strategy on one task's test split. `verify` caches verdicts across strategies and
    seeds (many answers repeat, and each code answer costs a sandboxed run)."""
    task = get_task(task_name)
    examples = task.examples("test", n_test)
    questions = [e.prompt for e in examples]
    max_new = max_new_tokens_for(task, engine.tokenizer)
    fp = engine.svd_cache.fingerprint if engine.svd_cache else None
    score = StrategyScore(task_name, strategy, seed, 0.0, len(examples))
    if strategy in ("none", "expert", "lora", "fewshot"):
        expert = None
        if strategy == "lora":
            engine.set_lora(import_peft(lib.root / "lora" / task.family))
        elif strategy == "expert":
            expert = lib.get(task.family, expect_fingerprint=fp)
        elif strategy == "fewshot":
            dirs = [lib.root / c for c in EXPERT_CATEGORIES]
            found = search_mixture(model, str(engine.svd_cache.root), dirs, task_name,
                                   fewshot or FewShotConfig(seed=seed), storage, scorers)
            score.alpha = found.alpha
            expert = alpha_mixture([lib.get(c, expect_fingerprint=fp) for c in EXPERT_CATEGORIES],
                                   found.alpha)
        engine.set_expert(expert)
        try:
            outs = engine.generate([format_prompt(engine.tokenizer, q) for q in questions],
                                   max_new_tokens=max_new)
        finally:
            engine.reset()
        score.accuracy = _score(task, examples, [o.text for o in outs], verify)
        return score
    classifier = lib.get(CLASSIFIER, expect_fingerprint=fp) if strategy == "classifier" else None
    experts = {c: lib.get(c, expect_fingerprint=fp) for c in EXPERT_CATEGORIES}
    result = TwoPass(engine, experts, Router(engine, classifier=classifier)).run(questions, max_new)
    score.accuracy = _score(task, examples, result.completions, verify)
    score.first_pass_share = result.first_pass_share
    score.routed = result.group_sizes
    return score


def run_eval(model: str, experts: Path, tasks: list[str], strategies: list[str],
             seeds: list[int], out: Path, svd_cache: str, n_test: int | None = None,
             fewshot: FewShotConfig | None = None, table: str = "unseen",
             results_json: Path | None = None) -> list[dict]:
    bad = set(strategies) - set(STRATEGIES)
    if bad:
        raise ValueError(f"unknown strategies {sorted(bad)}; choose from {STRATEGIES}")
    command = invocation()
    base, tok = load_model(model)
    engine = HFEngine(base, tok, svd_cache=SVDCache(svd_cache))
    out.mkdir(parents=True, exist_ok=True)
    scores: list[StrategyScore] = []
    fewshot = fewshot or FewShotConfig()
    verify = {t: RewardCache(get_task(t).kind) for t in tasks}
    for seed in seeds:
        lib = library_for_seed(experts, seed)
        fs = replace(fewshot, seed=seed)
        scorers = None  # engine actors, started on the first search and shared by all tasks
        for task_name in tasks:
            for strategy in strategies:
                t0 = time.perf_counter()
                # each score is kept as it is made, so a long sweep resumes where it stopped
                kept = out / "scores" / f"seed{seed}" / f"{task_name}-{strategy}.json"
                settings = {"n_test": n_test, "fewshot": asdict(fs) if strategy == "fewshot"
                            else None}
                earlier = next((x for x in scores if (x.task, x.strategy) == (task_name, "none")),
                               None)
                record = json.loads(kept.read_text()) if kept.exists() else None
                if record is not None and record["settings"] == settings:
                    s = StrategyScore(**record["score"])
                    console.print(f"[dim]reusing {kept}[/dim]")
                elif strategy == "none" and earlier is not None:
                    s = replace(earlier, seed=seed)  # greedy base weights: the same every seed
                else:
                    if strategy == "fewshot" and scorers is None:
                        scorers = start_scorers(model, svd_cache,
                                                [lib.root / c for c in EXPERT_CATEGORIES], fs)
                    s = evaluate_strategy(engine, lib, task_name, strategy, seed, n_test, fs,
                                          model, out / "tune", scorers, verify[task_name])
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    kept.write_text(json.dumps({"settings": settings, "score": s.__dict__}))
                scores.append(s)
                console.print(f"seed {seed} {task_name:>15} {strategy:>10}: "
                              f"{100 * s.accuracy:.1f}% ({time.perf_counter() - t0:.0f} s)")
        if scorers:
            import ray

            for a in scorers:
                ray.kill(a)
    (out / "scores.json").write_text(json.dumps([s.__dict__ for s in scores], indent=1))
    rows = _rows(scores, table, command, fewshot)
    _print(rows)
    (out / "table.md").write_text(markdown_table(rows))
    if any(s.alpha for s in scores):
        plot_alpha(scores, out / "alpha.png")
    if results_json:
        merge_results(results_json, rows)
    return rows


def method_name(strategy: str, fewshot: FewShotConfig) -> str:
    """The results.json method: few-shot variants other than CEM over one alpha per expert are
    named apart (`fewshot-per-matrix`, `fewshot-nevergrad`, ...), so their rows never merge."""
    name = METHOD_NAMES[strategy]
    if strategy == "fewshot":
        name += "-per-matrix" * fewshot.per_matrix
        name += f"-{fewshot.searcher}" * (fewshot.searcher != "cem")
    return name


def _rows(scores: list[StrategyScore], table: str, command: str,
          fewshot: FewShotConfig) -> list[dict]:
    rows = []
    keys = dict.fromkeys((s.task, s.strategy) for s in scores)
    for task, strategy in keys:
        group = [s for s in scores if (s.task, s.strategy) == (task, strategy)]
        mean, sd = mean_sd([100 * s.accuracy for s in group])
        shares = [s.first_pass_share for s in group if s.first_pass_share is not None]
        rows.append({"table": table, "task": task, "method": method_name(strategy, fewshot),
                     "metric": "accuracy", "mean": round(mean, 2), "sd": round(sd, 2),
                     "n_seeds": len(group), "params": None, "command": command,
                     "n": group[0].n, "seeds": [round(100 * s.accuracy, 2) for s in group],
                     "first_pass_share": round(sum(shares) / len(shares), 3) if shares else None})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | method | accuracy (mean +- sd) | seeds | first-pass share |",
             "|---|---|---|---|---|"]
    for r in rows:
        share = "" if r["first_pass_share"] is None else f"{100 * r['first_pass_share']:.0f}%"
        lines.append(f"| {r['task']} | {r['method']} | {r['mean']:.1f} +- {r['sd']:.1f} | "
                     f"{r['n_seeds']} | {share} |")
    return "\n".join(lines) + "\n"


def _print(rows: list[dict]) -> None:
    t = Table("task", "method", "accuracy (mean +- sd)", "seeds", "first-pass share",
              title="adaptation strategies, test split")
    for r in rows:
        share = "" if r["first_pass_share"] is None else f"{100 * r['first_pass_share']:.0f}%"
        t.add_row(r["task"], r["method"], f"{r['mean']:.1f} +- {r['sd']:.1f}",
                  str(r["n_seeds"]), share)
    console.print(t)


def plot_alpha(scores: list[StrategyScore], png: Path) -> None:
    """The paper's interpolation-weight figure: mean alpha per expert for each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(dict.fromkeys(s.task for s in scores if s.alpha))
    k = len(EXPERT_CATEGORIES)
    means = []
    for t in tasks:
        alphas = [np.asarray(s.alpha).reshape(k, -1).mean(axis=1) for s in scores
                  if s.task == t and s.alpha]
        means.append(np.mean(alphas, axis=0))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tasks), 3.2))
    width = 0.8 / k
    for j, c in enumerate(EXPERT_CATEGORIES):
        ax.bar(np.arange(len(tasks)) + j * width, [m[j] for m in means], width, label=c)
    ax.set_xticks(np.arange(len(tasks)) + width * (k - 1) / 2, tasks)
    ax.set_ylabel("alpha (mean over seeds)")
    ax.set_title("few-shot mixture weights")
    ax.legend(title="expert")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
