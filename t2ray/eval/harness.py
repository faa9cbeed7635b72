"""Greedy evaluation of any engine on task splits: accuracy with 95% Wilson intervals."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from t2ray.engines.base import Engine
from t2ray.eval.stats import cluster_bootstrap
from t2ray.models.prompt import Prompt
from t2ray.tasks import Task
from t2ray.tasks.rewards import CORRECT, rewards


@dataclass(frozen=True)
class EvalRow:
    task: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    seconds: float
    # Per-item verdicts in split order, for paired tests (McNemar) between methods.
    item_correct: tuple[bool, ...] = field(default=(), repr=False)
    distinct: int | None = None  # distinct content keys among the n items
    interval: str = "wilson"  # "wilson" (distinct contents) or "cluster-bootstrap"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("item_correct")
        return d


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sound near 0 and 1, unlike Wald)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def max_new_tokens_for(task: Task, engine: Engine, margin: float = 1.5) -> int:
    """Room for the longest validation solution, with margin (decided on validation, not test)."""
    longest = max(engine.count_tokens([e.solution for e in task.examples("validation", 50)]))
    return int(longest * margin) + 8


def answer_examples(engine: Engine, task: Task, examples: list,
                    system: str | list[str | None] | None = None, prefill: str = "") -> list[str]:
    """Greedy answers to `examples` (with `system` as the system turn, or a list of one per
    example, and the answers forced to start with `prefill`), each as prefill + completion."""
    systems = system if isinstance(system, list) else [system] * len(examples)
    if len(systems) != len(examples):
        raise ValueError(f"{len(systems)} system turns for {len(examples)} examples")
    completions = engine.generate([Prompt(e.prompt, s, prefill)
                                   for e, s in zip(examples, systems)],
                                  max_new_tokens=max_new_tokens_for(task, engine))
    return [prefill + c.text for c in completions]


def answer_in_turns(engine: Engine, task: Task, examples: list, adapters: list,
                    systems: list[str | None] | None = None) -> list[str]:
    """Greedy answers with item i run under `adapters[i % k]` and `systems[i % k]` (k
    descriptions taking turns over the items), all in one per-row batch."""
    k = len(adapters)
    per_row = [adapters[i % k] for i in range(len(examples))]
    turns = [None if systems is None else systems[i % k] for i in range(len(examples))]
    with engine.adapted(None if all(a is None for a in per_row) else per_row):
        return answer_examples(engine, task, examples, turns)


def verdicts_of(task: Task, examples: list, answers: list[str]) -> list[bool]:
    return [s == CORRECT for s in rewards(task.kind, examples, answers)]


def score_examples(engine: Engine, task: Task, examples: list,
                   system: str | None = None, prefill: str = "") -> list[bool]:
    """One verdict per example on its greedy answer (`answer_examples`)."""
    return verdicts_of(task, examples, answer_examples(engine, task, examples, system, prefill))


def evaluate_task(engine: Engine, task: Task, split: str = "test", n: int | None = None,
                  system: str | None = None, prefill: str = "") -> EvalRow:
    t0 = time.perf_counter()
    keys, examples = zip(*task.keyed_examples(split, n))
    verdicts = tuple(score_examples(engine, task, list(examples), system, prefill))
    correct = sum(verdicts)
    low, high, method = accuracy_interval(verdicts, keys)
    return EvalRow(task.name, split, len(examples), correct, correct / len(examples), low, high,
                   time.perf_counter() - t0, verdicts, len(set(keys)), method)


def seeds_interval(verdicts_by_seed, keys, base=None) -> tuple[float, float]:
    """95% interval of the mean accuracy of several seeds scored on the same items (or, with
    `base`, a reference's verdicts on those items, of its mean difference to it): a bootstrap
    over the items' contents, each content carrying every seed's verdicts on it. `base` is one
    list (a reference that is the same on every seed) or one list per seed (paired seed by
    seed)."""
    values = [float(v) for vs in verdicts_by_seed for v in vs]
    paired = None
    if base is not None:
        per_seed = base if isinstance(base[0], (list, tuple)) else [base] * len(verdicts_by_seed)
        paired = [float(v) for vs in per_seed for v in vs]
    return cluster_bootstrap(values, list(keys) * len(verdicts_by_seed), paired)


def interval_fields(verdicts_by_seed, keys, base=None) -> dict:
    """A row's `ci95` (of the seeds' mean accuracy, in %) and, with the `base`'s verdicts on the
    same items, its `diff_vs_base_ci95` (`seeds_interval`)."""
    out = {"ci95": [round(100 * v, 2) for v in seeds_interval(verdicts_by_seed, keys)]}
    if base is not None:
        out["diff_vs_base_ci95"] = [round(100 * v, 2) for v in
                                    seeds_interval(verdicts_by_seed, keys, base)]
    return out


def accuracy_interval(verdicts, keys) -> tuple[float, float, str]:
    """95% interval of an accuracy: Wilson when every item has its own content, else a bootstrap
    over contents (items that repeat a content are not independent draws)."""
    if len(set(keys)) == len(keys):
        return (*wilson_interval(sum(verdicts), len(verdicts)), "wilson")
    return (*cluster_bootstrap([float(v) for v in verdicts], list(keys)), "cluster-bootstrap")
