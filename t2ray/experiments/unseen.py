"""The unseen-family table (`t2ray eval`, jobs/unseen_results.py): accuracy per adaptation
strategy and task, over seeds, with the alpha plot.

Strategies: `none` (base weights), `expert` (the task family's own expert), `lora` (the task
family's LoRA baseline), `prompt` and `classifier` (two-pass with the base model or the
classifier expert as router), `fewshot` (a CEM mixture per task found on validation shots).
Experts come from a library directory holding `<category>/` expert folders (`math`, `code`,
`reasoning`, and `route` for the classifier) and `lora/<category>/` PEFT adapters, or one such
library per seed under `seed<k>/`; `assemble_libraries` builds those from a seen sweep.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from t2ray.adapt.fewshot import FewShotConfig, alpha_mixture, search_mixture, start_scorers
from t2ray.adapt.profile import FewShotProfile
from t2ray.adapt.router import BASE, Router
from t2ray.adapt.two_pass import TwoPass
from t2ray.engines.base import Engine
from t2ray.engines.factory import build_engine
from t2ray.eval.harness import interval_fields, max_new_tokens_for, seeds_interval
from t2ray.eval.results import (
    ROW_COLUMNS,
    ResultRow,
    invocation,
    merge_results,
    row_table,
    verdict_entry,
    write_verdicts,
)
from t2ray.eval.stats import mean_sd
from t2ray.lora.peft_io import import_peft
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertLibrary, ExpertVector
from t2ray.tasks import get_task
from t2ray.tasks.rewards import CORRECT, RewardCache

STRATEGIES = ("none", "expert", "oracle-expert", "lora", "prompt", "classifier", "fewshot")
METHOD_NAMES = {"none": "base", "expert": "svf-rl", "oracle-expert": "oracle-expert",
                "lora": "lora-rl", "prompt": "prompt", "classifier": "classifier",
                "fewshot": "fewshot"}
ORACLE_VAL_N = 200  # validation items that choose the oracle expert
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
    chosen: str | None = None  # oracle-expert: the expert (or `other`, the base) validation chose
    router_threshold: float | None = None  # prompt / classifier: chosen on route validation
    router_val_accuracy: float | None = None
    router_test_accuracy: float | None = None  # on the routing task's test split
    # few-shot: the chosen mixture's accuracy on the search's validation selection items, the
    # reading that compares few-shot variants (mixing space, per-layer alpha) without the test
    selection_accuracy: float | None = None
    verdicts: str = ""  # per test item, in split order: "1" right, "0" wrong


def library_for_seed(experts: Path, seed: int) -> ExpertLibrary:
    seeded = Path(experts) / f"seed{seed}"
    return ExpertLibrary(seeded if seeded.exists() else experts)


def _verdicts(task, examples, texts, verify: RewardCache | None) -> list[bool]:
    return [v == CORRECT for v in (verify or RewardCache(task.kind))(examples, texts)]


def _adapted_verdicts(engine: Engine, task, examples, adapter, max_new: int,
                      verify: RewardCache | None) -> list[bool]:
    """Greedy verdicts on `examples` with `adapter` (None: the base weights) applied."""
    with engine.adapted(adapter):
        outs = engine.generate([e.prompt for e in examples], max_new_tokens=max_new)
    return _verdicts(task, examples, [o.text for o in outs], verify)


def _keep(score: StrategyScore, verdicts: list[bool]) -> StrategyScore:
    score.verdicts = "".join("1" if v else "0" for v in verdicts)
    score.accuracy = sum(verdicts) / len(verdicts)
    return score


def evaluate_strategy(engine: Engine, cache: SVDCache, lib: ExpertLibrary, task_name: str,
                      strategy: str, seed: int, n_test: int | None,
                      fewshot: FewShotConfig | None = None, model: str | None = None,
                      storage: Path | None = None, scorers: list | None = None,
                      verify: RewardCache | None = None,
                      calibrated: dict | None = None) -> StrategyScore:
    """One strategy on one task's test split; `cache` is the engine's base model's SVD cache.
    `calibrated` keeps a router's (threshold, route validation and test accuracy) across the
    tasks of one library, since they do not depend on the task.
    `verify` caches verdicts across strategies and seeds (many answers repeat, and each code
    answer costs a sandboxed run)."""
    task = get_task(task_name)
    examples = task.examples("test", n_test)
    questions = [e.prompt for e in examples]
    max_new = max_new_tokens_for(task, engine)
    fp = cache.fingerprint
    score = StrategyScore(task_name, strategy, seed, 0.0, len(examples))
    if strategy in ("none", "expert", "oracle-expert", "lora", "fewshot"):
        adapter = None
        if strategy == "oracle-expert":
            score.chosen, adapter = oracle_expert(engine, lib, task, fp, verify)
        elif strategy == "lora":
            adapter = import_peft(lib.root / "lora" / task.family, expect_fingerprint=fp)
        elif strategy == "expert":
            adapter = lib.get(task.family, expect_fingerprint=fp)
        elif strategy == "fewshot":
            dirs = [lib.root / c for c in EXPERT_CATEGORIES]
            fewshot = fewshot or FewShotConfig(seed=seed)
            found = search_mixture(model, str(cache.root), dirs, task_name, fewshot, storage,
                                   scorers)
            score.alpha, score.selection_accuracy = found.alpha, found.selection_accuracy
            adapter = alpha_mixture([lib.get(c, expect_fingerprint=fp)
                                     for c in EXPERT_CATEGORIES], found.alpha, fewshot.mix_space)
        return _keep(score, _adapted_verdicts(engine, task, examples, adapter, max_new, verify))
    classifier = lib.get(CLASSIFIER, expect_fingerprint=fp) if strategy == "classifier" else None
    experts = {c: lib.get(c, expect_fingerprint=fp) for c in EXPERT_CATEGORIES}
    router = Router(engine, classifier=classifier)
    calibrated = {} if calibrated is None else calibrated
    if strategy not in calibrated:
        val_accuracy = router.calibrate()
        calibrated[strategy] = (router.threshold, val_accuracy, router.accuracy("test"))
    (router.threshold, score.router_val_accuracy,
     score.router_test_accuracy) = calibrated[strategy]
    score.router_threshold = router.threshold
    result = TwoPass(engine, experts, router).run(questions, max_new)
    score.first_pass_share = result.first_pass_share
    score.routed = result.group_sizes
    return _keep(score, _verdicts(task, examples, result.completions, verify))


def oracle_expert(engine: Engine, lib: ExpertLibrary, task, fingerprint: str,
                  verify: RewardCache | None = None) -> tuple[str, ExpertVector | None]:
    """The single expert, or the base (`other`), with the best accuracy on the family's first
    `ORACLE_VAL_N` validation items (ties to the base, then in category order): what routing
    could reach at best, chosen without the test split."""
    examples = task.examples("validation", ORACLE_VAL_N)
    max_new = max_new_tokens_for(task, engine)
    candidates = {BASE: None, **{c: lib.get(c, expect_fingerprint=fingerprint)
                                 for c in EXPERT_CATEGORIES}}
    scored = [(sum(_adapted_verdicts(engine, task, examples, a, max_new, verify)), -i, name)
              for i, (name, a) in enumerate(candidates.items())]
    name = max(scored)[2]
    return name, candidates[name]


def library_fingerprint(lib: ExpertLibrary) -> str:
    """Content hash of every expert and LoRA under a library root."""
    files = sorted(p for p in lib.root.rglob("*.safetensors") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(lib.root)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


def check_strategies(strategies: list[str]) -> None:
    bad = set(strategies) - set(STRATEGIES)
    if bad:
        raise ValueError(f"unknown strategies {sorted(bad)}; choose from {STRATEGIES}")


def run_eval(model: str, experts: Path, tasks: list[str], strategies: list[str],
             seeds: list[int], out: Path, svd_cache: str, n_test: int | None = None,
             fewshot: FewShotConfig | None = None, table: str = "unseen",
             results_json: Path | None = None, engine: str = "hf") -> list[ResultRow]:
    """Every strategy on every task and seed (scores kept under `out` as they are made); the
    second pass runs on `engine` (`hf` or `vllm`), few-shot members on `fewshot.engine`."""
    check_strategies(strategies)
    command = invocation()
    cache = SVDCache(svd_cache)
    out.mkdir(parents=True, exist_ok=True)
    scores: list[StrategyScore] = []
    scored_with: dict[tuple[int, str], dict] = {}  # (seed, task) -> what its scores were made on
    fewshot = fewshot or FewShotConfig()
    verify = {t: RewardCache(get_task(t).kind) for t in tasks}
    items_keys = {t: get_task(t).items_fingerprint("test", n_test) for t in tasks}
    with closing(build_engine(engine, model, svd_cache)) as eng:
        for seed in seeds:
            lib = library_for_seed(experts, seed)
            library_key = library_fingerprint(lib)
            fs = replace(fewshot, seed=seed)
            scorers = None  # engine actors, started on the first search and shared by all tasks
            calibrated: dict = {}  # this library's routers, calibrated once for all tasks
            for task_name in tasks:
                for strategy in strategies:
                    t0 = time.perf_counter()
                    # each score is kept as it is made, so a long sweep resumes where it stopped
                    kept = (out / "scores" / f"seed{seed}"
                            / f"{task_name}-{method_name(strategy, fs)}.json")
                    # a kept score is reused only for the same base, library and items
                    common = {"n_test": n_test, "base": cache.fingerprint,
                              "library": library_key, "items": items_keys[task_name]}
                    scored_with[seed, task_name] = common
                    settings = {**common, "fewshot": asdict(fs) if strategy == "fewshot"
                                else None}
                    earlier = next((x for x in scores if (x.task, x.strategy) == (task_name, "none")),
                                   None)
                    record = json.loads(kept.read_text()) if kept.exists() else None
                    if record is not None and record["settings"] == settings:
                        s = StrategyScore(**record["score"])
                        console.print(f"[dim]reusing {kept}[/dim]")
                    else:
                        if strategy == "none" and earlier is not None:
                            s = replace(earlier, seed=seed)  # greedy base: the same every seed
                        else:
                            if strategy == "fewshot" and scorers is None:
                                scorers = start_scorers(
                                    model, svd_cache, [lib.root / c for c in EXPERT_CATEGORIES],
                                    fs)
                            s = evaluate_strategy(eng, cache, lib, task_name, strategy, seed,
                                                  n_test, fs, model, out / "tune", scorers,
                                                  verify[task_name], calibrated)
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        kept.write_text(json.dumps({"settings": settings, "score": s.__dict__}))
                    scores.append(s)
                    if s.alpha:  # the stored form a server mixes with (`fewshot:<profile>`)
                        FewShotProfile(task_name, tuple(s.alpha), EXPERT_CATEGORIES,
                                       cache.fingerprint, fs.mix_space).save(
                            out / "profiles" / f"{task_name}-seed{seed}")
                    console.print(f"seed {seed} {task_name:>15} {strategy:>10}: "
                                  f"{100 * s.accuracy:.1f}% ({time.perf_counter() - t0:.0f} s)")
            if scorers:
                import ray

                for a in scorers:
                    ray.kill(a)
    (out / "scores.json").write_text(json.dumps([s.__dict__ for s in scores], indent=1))
    named = {method_name(strategy, fewshot): [s for s in scores if s.strategy == strategy]
             for strategy in dict.fromkeys(s.strategy for s in scores)}
    others = _kept_others(out, set(named), scored_with)
    rows = _rows(named, others, table, command) + _mean_rows(named, others, table, command)
    (out / "table.md").write_text(row_table(rows, UNSEEN_COLUMNS,
                                            "adaptation strategies, test split", console))
    if any(s.alpha for s in scores):
        plot_alpha(scores, out / "alpha.png")
    if results_json:  # the rows, and beside them the per-item verdicts behind them
        merge_results(results_json, rows)
        write_verdicts(Path(results_json).parent / "scores" / f"{table}.jsonl.gz", table,
                       [verdict_entry(s.task, method_name(s.strategy, fewshot), "test",
                                      _bits(s.verdicts), s.seed) for s in scores if s.verdicts],
                       command)
    return rows


def method_name(strategy: str, fewshot: FewShotConfig) -> str:
    """The results.json method: few-shot variants other than CEM over one alpha per expert in z
    space are named apart (`fewshot-per-layer`, `fewshot-nevergrad`, `fewshot-mask`, ...), so
    their rows never merge."""
    name = METHOD_NAMES[strategy]
    if strategy == "fewshot":
        name += "-per-matrix" * fewshot.per_matrix + "-per-layer" * fewshot.per_layer
        name += f"-{fewshot.searcher}" * (fewshot.searcher != "cem")
        name += "-mask" * (fewshot.mix_space == "mask")
    return name


def _kept_others(out: Path, produced: set[str],
                 scored_with: dict[tuple[int, str], dict]) -> dict[str, list[StrategyScore]]:
    """The kept scores of methods this run did not produce (by method name), made on the same
    base, library, items and seeds: what a variant run (`fewshot-per-layer`, `fewshot-mask`)
    pairs its rows with, so they carry their difference to the base and to the other methods."""
    others: dict[str, list[StrategyScore]] = {}
    for (seed, task), common in scored_with.items():
        for kept in sorted((out / "scores" / f"seed{seed}").glob(f"{task}-*.json")):
            record = json.loads(kept.read_text())
            name = kept.stem[len(task) + 1:]
            if (record["score"]["task"] == task and name not in produced
                    and {k: record["settings"].get(k) for k in common} == common):
                others.setdefault(name, []).append(StrategyScore(**record["score"]))
    return others


def _rows(named: dict[str, list[StrategyScore]], others: dict[str, list[StrategyScore]],
          table: str, command: str) -> list[ResultRow]:
    """One row per (task, method): mean +- sd over seeds, the 95% interval of that mean and of
    its difference to the base (bootstraps over the test items' contents, every seed's verdicts
    kept together), and for the routers their accuracy on the routing task's test split and
    how often they sent the family to the oracle route (the oracle expert validation chose)."""
    rows = []
    bases = named.get("base") or others.get("base") or []
    oracles = named.get("oracle-expert") or others.get("oracle-expert") or []
    for method, scores in named.items():
        for task in dict.fromkeys(s.task for s in scores):
            group = [s for s in scores if s.task == task]
            mean, sd = mean_sd([100 * s.accuracy for s in group])
            shares = [s.first_pass_share for s in group if s.first_pass_share is not None]
            extra = {"seeds": [round(100 * s.accuracy, 2) for s in group],
                     "first_pass_share": round(sum(shares) / len(shares), 3) if shares else None}
            if all(s.verdicts for s in group):
                base = next((b for b in bases if b.task == task and b.verdicts), None)
                extra.update(_intervals(group, None if method == "base" else base))
            if group[0].strategy in ("prompt", "classifier"):
                extra.update(_routing([o for o in oracles if o.task == task], group))
            selection = [s.selection_accuracy for s in group if s.selection_accuracy is not None]
            if selection:
                extra["selection_accuracy"] = [round(100 * a, 2) for a in selection]
            rows.append(ResultRow(table, task, method, round(mean, 2), round(sd, 2), len(group),
                                  None, command, n=group[0].n, extra=extra))
    return rows


MEAN_TASK = "unseen-mean"


def _pooled(named: dict[str, list[StrategyScore]],
            tasks: list[str]) -> dict[str, dict[int, list[bool]]]:
    """Per method scored on every one of `tasks` (for each of its seeds): its verdicts on all
    their test items, by seed."""
    pooled = {}
    for method, scores in named.items():
        by_seed: dict[int, dict[str, list[bool]]] = {}
        for s in scores:
            if s.verdicts and s.task in tasks:
                by_seed.setdefault(s.seed, {})[s.task] = _bits(s.verdicts)
        if len(tasks) > 1 and by_seed and all(len(v) == len(tasks) for v in by_seed.values()):
            pooled[method] = {k: [b for t in tasks for b in v[t]]
                              for k, v in sorted(by_seed.items())}
    return pooled


def _mean_rows(named: dict[str, list[StrategyScore]], others: dict[str, list[StrategyScore]],
               table: str, command: str) -> list[ResultRow]:
    """Per method scored on every family with the same seeds: the unseen mean (every family's
    test items pooled; with equal family sizes, the mean of the families' accuracies), its 95%
    interval, and `diff_ci95`: the paired interval of its difference to each other such
    method, this run's or kept (this minus that, seed by seed), so an ordering of methods can
    be read with its noise. Bootstraps over the items' contents, every seed's verdicts on an
    item kept together."""
    scores = [s for group in named.values() for s in group]
    tasks = list(dict.fromkeys(s.task for s in scores))
    pooled = _pooled(named, tasks)
    if not pooled:
        return []
    compared = {**_pooled(others, tasks), **pooled}
    n = {s.task: s.n for s in scores}
    keys = [f"{t}/{k}" for t in tasks for k, _ in get_task(t).keyed_examples("test", n[t])]
    rows = []
    for method, by_seed in pooled.items():
        runs = list(by_seed.values())
        accuracies = [100 * sum(v) / len(v) for v in runs]
        mean, sd = mean_sd(accuracies)
        diffs = {other: [round(100 * x, 2) for x in seeds_interval(
                     runs, keys, list(theirs.values()))]
                 for other, theirs in compared.items()
                 if other != method and theirs.keys() == by_seed.keys()}
        extra = {"seeds": [round(a, 2) for a in accuracies],
                 **interval_fields(runs, keys), "diff_ci95": diffs,
                 "interval": "cluster-bootstrap over contents, seeds pooled"}
        rows.append(ResultRow(table, MEAN_TASK, method, round(mean, 2), round(sd, 2), len(runs),
                              None, command, n=len(keys), extra=extra))
    return rows


def _bits(verdicts: str) -> list[bool]:
    return [c == "1" for c in verdicts]


def _intervals(group: list[StrategyScore], base: StrategyScore | None) -> dict:
    """The interval of `group`'s mean and, given the base's score on the task, of its paired
    difference to it."""
    keys = [k for k, _ in get_task(group[0].task).keyed_examples("test", group[0].n)]
    paired = _bits(base.verdicts) if base is not None else None
    return {**interval_fields([_bits(s.verdicts) for s in group], keys, paired),
            "interval": "cluster-bootstrap over contents, seeds pooled"}


def _routing(oracles: list[StrategyScore], group: list[StrategyScore]) -> dict:
    out = {"router_threshold": [s.router_threshold for s in group]}
    test = [s.router_test_accuracy for s in group if s.router_test_accuracy is not None]
    if test:
        out["router_test_accuracy"] = round(100 * sum(test) / len(test), 2)
    oracle = {s.seed: s.chosen for s in oracles}
    agree = [s.routed.get(oracle[s.seed], 0) / s.n for s in group if s.seed in oracle]
    if agree:  # the share of the family's test items sent to its oracle route
        out["oracle_route"] = [oracle[s.seed] for s in group if s.seed in oracle]
        out["oracle_route_agreement"] = round(100 * sum(agree) / len(agree), 2)
    return out


def _share_cell(r: ResultRow) -> str:
    share = r.get("first_pass_share")
    return "" if share is None else f"{100 * share:.0f}%"


UNSEEN_COLUMNS = {**ROW_COLUMNS, "first-pass share": _share_cell}


def assemble_libraries(seen: Path, out: Path, seeds: list[int], cache: SVDCache,
                       train_classifier, with_lora: bool) -> Path:
    """Per seed, `<out>/library/seed<k>/`: the seen sweep's SVF-RL experts of that seed (math,
    code, reasoning), the classifier expert (`route`, trained here by `train_classifier(seed,
    run_dir)` unless a finished run exists) and, with `with_lora`, the seen sweep's LoRA-RL
    adapters under `lora/<family>`. Returns `<out>/library`."""
    for seed in seeds:
        lib = ExpertLibrary(out / "library" / f"seed{seed}")
        route_run = out / "route" / f"seed{seed}"
        if not (route_run / "expert").exists():
            train_classifier(seed, route_run)
        sources = {c: seen / c / "svf-rl" / f"seed{seed}" / "expert" for c in EXPERT_CATEGORIES}
        sources[CLASSIFIER] = route_run / "expert"
        for name, src in sources.items():
            if name not in lib.names():
                lib.add(name, ExpertVector.load(src, expect_fingerprint=cache.fingerprint))
        for family in EXPERT_CATEGORIES if with_lora else ():
            dst = lib.root / "lora" / family
            if not dst.exists():
                shutil.copytree(seen / family / "lora-rl" / f"seed{seed}" / "lora", dst)
    return out / "library"


def unseen_table(config: Path, seen: Path, out: Path, model: str, seeds: list[int],
                 strategies: list[str], n_test: int | None, fewshot: FewShotConfig,
                 tables: Path | None = None, results_json: Path | None = None,
                 table: str = "unseen") -> list[ResultRow]:
    """The unseen-family table (the paper's Table 2) from a finished seen sweep: per seed the
    classifier expert is trained with the sweep's SVF-RL settings (`config`, the seen sweep's
    YAML; its `tasks: route:` entry holds the classifier's own), the libraries are assembled,
    then every strategy is scored on the unseen families' test splits."""
    import yaml

    from t2ray.distributed.ray_env import ensure_ray
    from t2ray.rl.launch import train
    from t2ray.rl.trainer import TrainConfig
    from t2ray.svf.ops import decompose_model
    from t2ray.tasks import CORE_UNSEEN

    fields = yaml.safe_load(Path(config).read_text()) or {}
    overrides = (fields.pop("methods", {}) or {}).get("svf-rl", {})
    overrides.update(((fields.pop("tasks", {}) or {}).get(CLASSIFIER) or {}).get("svf-rl", {}))
    cache = decompose_model(model, "mlp")
    # the model and its cache are this table's, whatever the sweep's YAML named
    base_cfg = TrainConfig(**{**fields, **overrides, "model": model,
                              "svd_cache": str(cache.root)})
    library = assemble_libraries(
        Path(seen), Path(out), seeds, cache,
        lambda seed, run: train(replace(base_cfg, out=str(run), task=CLASSIFIER, seed=seed),
                                workers=0),
        with_lora="lora" in strategies)
    if "fewshot" in strategies:
        ensure_ray(num_cpus=max(2, fewshot.concurrency))
    return run_eval(model, library, list(CORE_UNSEEN), strategies, seeds, Path(tables or out),
                    str(cache.root), n_test, fewshot, table=table, results_json=results_json)


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
