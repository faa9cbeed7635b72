"""Few-shot adaptation: z' = sum_k alpha_k z_k with alpha found on a handful of shots.

The search runs on Ray Tune: every population member is a trial, a generation's members run in
parallel, and the trials share `concurrency` engine actors (one model copy per actor, never one
per trial) handed out through a queue. CEM (`t2ray.adapt.cem.CEMSearcher`) is the default;
Optuna's CMA-ES sampler and Nevergrad's CMA are selectable.

Data: the shots are the first `shots` validation items of the task, a disjoint selection set
(the next `select` validation items) picks among the anchors (alpha = 0, each expert alone, the
uniform mix: `anchors.anchor_members`, scored in generation 0) and every member that became the
incumbent on the shots, and the test split is never seen here - the reference selected partly on
its test remainder. So the search falls back to the base or a single expert when no mixture
beats them on held-out items; 100 selection items put one item at 1 point (40 gave 2.5).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from t2ray.adapt.anchors import anchor_members
from t2ray.adapt.member import EngineActor, score_member
from t2ray.engines.base import Engine
from t2ray.engines.factory import build_engine
from t2ray.eval.harness import max_new_tokens_for
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import MIX_SPACES, ExpertVector, mix
from t2ray.svf.targets import layer_index
from t2ray.tasks import get_task
from t2ray.tasks.rewards import CORRECT, RewardCache

SEARCHERS = ("cem", "optuna-cmaes", "nevergrad")


@dataclass
class FewShotConfig:
    shots: int = 20
    select: int = 100  # selection-set items (validation, after the shots)
    per_matrix: bool = False  # one alpha per expert x matrix instead of per expert
    per_layer: bool = False  # one alpha per expert x decoder layer (the reference's setting)
    population: int = 32
    generations: int = 10  # the reference runs 50
    concurrency: int = 2  # engine actors = trials running at once
    threads_per_trial: int = 1
    searcher: str = "cem"
    mix_space: str = "z"  # z or mask (`t2ray.svf.expert.mix`): how alpha mixes the experts
    engine: str = "hf"  # what each engine actor holds: an HF model or a vLLM engine
    seed: int = 0

    def __post_init__(self):
        if self.per_matrix and self.per_layer:
            raise ValueError("choose per_matrix or per_layer, not both")
        if self.mix_space not in MIX_SPACES:
            raise ValueError(f"mix_space must be one of {MIX_SPACES}, not {self.mix_space!r}")
        if self.searcher not in SEARCHERS:
            raise ValueError(f"searcher must be one of {SEARCHERS}, not {self.searcher!r}")
        if self.shots < 1 or self.concurrency < 1:
            raise ValueError("few-shot search needs shots >= 1 and concurrency >= 1")


def scalar_fitness(accuracy: float, loglik: float) -> float:
    """For searchers that take one number: accuracy first, then the geometric-mean token
    probability of the correct answers (< 1e-3, below one shot's worth of accuracy)."""
    return accuracy + 1e-3 * math.exp(loglik)


def layer_of_matrices(names: list[str]) -> list[int]:
    """Each matrix's decoder layer, numbered 0.. in layer order (`.layers.<i>.` in its name)."""
    index = [layer_index(n) for n in names]
    if None in index:
        raise ValueError("per-layer alpha needs every matrix inside a numbered decoder layer")
    order = sorted(set(index))
    return [order.index(i) for i in index]


def alpha_mixture(experts: list[ExpertVector], alpha: list[float],
                  space: str = "z") -> ExpertVector:
    """The mixture for a flat alpha, expert-major: K weights (per expert), K x matrices (per
    matrix, in sorted name order) or K x layers (per layer, shared by the layer's matrices)."""
    a = torch.tensor(alpha, dtype=torch.float32)
    k, names = len(experts), sorted(experts[0].z)
    if a.numel() in (k, k * len(names)):
        return mix(experts, a if a.numel() == k else a.view(k, -1), space)
    layers = layer_of_matrices(names)
    if a.numel() != k * (max(layers) + 1):
        raise ValueError(f"alpha of length {a.numel()} fits neither {k} experts nor their "
                         f"{len(names)} matrices or {max(layers) + 1} layers")
    return mix(experts, a.view(k, -1)[:, layers], space)


class ShotScorer:
    """Scores mixtures of experts on fixed examples of a task through any engine (inside an
    `EngineActor` in searches)."""

    def __init__(self, engine: Engine, experts: list[ExpertVector]):
        self.engine, self.experts = engine, experts

    @classmethod
    def load(cls, model: str, svd_cache: str, expert_dirs: list[str], threads: int = 1,
             engine: str = "hf") -> "ShotScorer":
        """An engine (`hf` or `vllm`) on `model` with the experts in `expert_dirs` (what an
        actor holds)."""
        torch.set_num_threads(threads)
        cache = SVDCache(svd_cache)
        return cls(build_engine(engine, model, svd_cache),
                   [ExpertVector.load(d, expect_fingerprint=cache.fingerprint)
                    for d in expert_dirs])

    def set_task(self, task: str, shots: int, select: int, mix_space: str = "z") -> None:
        """Score on this task, mixing in `mix_space`, from now on (the actor, and its model copy,
        serve many searches)."""
        self.mix_space = mix_space
        self.task = get_task(task)
        examples = self.task.examples("validation", shots + select)
        self.sets = {"shots": examples[:shots], "selection": examples[shots:]}
        self.max_new_tokens = max_new_tokens_for(self.task, self.engine)
        # neighbouring members often give the same answers; each code answer costs a sandbox run
        self.verify = RewardCache(self.task.kind)

    def score(self, alpha: list[float], on: str = "shots") -> dict:
        t0 = time.perf_counter()
        examples = self.sets[on]
        with self.engine.adapted(alpha_mixture(self.experts, alpha, self.mix_space)) as eng:
            outs = eng.generate([e.prompt for e in examples], max_new_tokens=self.max_new_tokens)
            per_token = eng.score([e.prompt for e in examples], [e.solution for e in examples],
                                  per_token=True)
        verdicts = self.verify(examples, [o.text for o in outs])
        accuracy = sum(v == CORRECT for v in verdicts) / len(examples)
        loglik = float(per_token.mean())
        return {"accuracy": accuracy, "loglik": loglik,
                "fitness": scalar_fitness(accuracy, loglik),
                "score_seconds": time.perf_counter() - t0}


@dataclass
class FewShotResult:
    task: str
    alpha: list[float]
    shots_accuracy: float
    selection_accuracy: float | None
    history: list[dict]  # per generation: best and mean accuracy so far
    members: list[dict]  # every trial in suggestion order: alpha, accuracy, loglik
    trials: int
    seconds: float
    score_seconds: float  # spent scoring members in the engine actors, summed over trials
    config: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _search_alg(cfg: FewShotConfig, dim: int, n_experts: int):
    if cfg.searcher == "cem":
        from t2ray.adapt.cem import CEMConfig, CEMSearcher

        return CEMSearcher(CEMConfig(dim=dim, n_experts=n_experts, population=cfg.population,
                                     generations=cfg.generations, seed=cfg.seed))
    start = [{f"a{i}": float(x) for i, x in enumerate(a)} for a in anchor_members(n_experts, dim)]
    if cfg.searcher == "optuna-cmaes":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        space = {f"a{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(dim)}
        return OptunaSearch(space, metric="fitness", mode="max", points_to_evaluate=start,
                            sampler=optuna.samplers.CmaEsSampler(seed=cfg.seed))
    import nevergrad as ng
    from ray.tune.search.nevergrad import NevergradSearch

    # a Dict space: Ray's NevergradSearch feeds points_to_evaluate to it as one dict (an
    # Instrumentation expects them as positional arguments and refuses the start point)
    space = ng.p.Dict(**{f"a{i}": ng.p.Scalar(lower=0.0, upper=1.0) for i in range(dim)})
    return NevergradSearch(ng.optimizers.CMA, space=space, metric="fitness", mode="max",
                           points_to_evaluate=start)


class _NoMissingTrialLogs(logging.Filter):
    """With the trial loggers off, Tune's result grid warns that it found no metrics file for
    each trial: expected, so dropped. Every other warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics")


@contextmanager
def _without_trial_logs():
    """Tune writes JSON, CSV and TensorBoard logs for every trial by default: a search of 32 x 10
    members would leave 320 trial logs nobody reads (docs/benchmarks.md has what they cost).
    `FewShotResult.members` keeps what they would hold."""
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    old = os.environ.get(key)
    os.environ[key] = "1"
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    quiet = _NoMissingTrialLogs()
    analysis_log.addFilter(quiet)
    try:
        yield
    finally:
        analysis_log.removeFilter(quiet)
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def start_scorers(model: str, svd_cache: str, expert_dirs: list, cfg: FewShotConfig) -> list:
    """`cfg.concurrency` engine actors (ShotScorers), to share between searches (model loading is slow).

    The actors reserve no CPU themselves: a trial reserves `threads_per_trial` CPUs while it
    holds an actor, so Tune's resource accounting covers the work the actor does for it."""
    import ray

    scorer = ray.remote(EngineActor).options(num_cpus=0)
    return [scorer.remote(model, svd_cache, [str(d) for d in expert_dirs], cfg.threads_per_trial,
                          cfg.engine) for _ in range(cfg.concurrency)]


def search_mixture(model: str, svd_cache: str, expert_dirs: list[str], task: str,
                   cfg: FewShotConfig, storage: str | Path,
                   scorers: list | None = None) -> FewShotResult:
    """Find alpha on the task's shots with Ray Tune (Ray must be initialised by the caller).

    `scorers` (from `start_scorers`) are reused if given, else started and stopped here."""
    import ray
    from ray import tune
    from ray.util.queue import Queue

    t0 = time.perf_counter()
    own = scorers is None
    actors = start_scorers(model, svd_cache, expert_dirs, cfg) if own else scorers
    if len(actors) < cfg.concurrency:
        raise ValueError(f"{len(actors)} scorers for {cfg.concurrency} concurrent trials")
    ray.get([a.set_task.remote(task, cfg.shots, cfg.select, cfg.mix_space) for a in actors])
    names = sorted(ExpertVector.load(expert_dirs[0]).z)
    n_layers = max(layer_of_matrices(names)) + 1 if cfg.per_layer else 1
    dim = len(expert_dirs) * (len(names) if cfg.per_matrix else n_layers)
    pool = Queue(actor_options={"num_cpus": 0})
    for a in actors:
        pool.put(a)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(score_member, pool=pool, dim=dim),
                            {"cpu": cfg.threads_per_trial}),
        tune_config=tune.TuneConfig(search_alg=_search_alg(cfg, dim, len(expert_dirs)),
                                    num_samples=cfg.population * cfg.generations,
                                    max_concurrent_trials=cfg.concurrency, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(Path(storage).resolve()),
                                  name=f"fewshot-{task}", verbose=0),
    )
    with _without_trial_logs():
        grid = tuner.fit()
    done = [r for r in grid if r.metrics and "accuracy" in r.metrics]
    if not done:
        raise RuntimeError(f"few-shot search on {task!r}: no trial reported ({grid.errors[:1]})")
    # Suggestion order: CEM tags (generation, member); other searchers go by report time.
    done.sort(key=lambda r: (r.config.get("generation", 0), r.config.get("member", 0),
                             r.metrics.get("timestamp", 0)))
    rows = [r.metrics for r in done]
    history, incumbents, best = [], [], None
    for g in range(math.ceil(len(rows) / cfg.population)):
        gen = rows[g * cfg.population : (g + 1) * cfg.population]
        top = max(gen, key=lambda m: (m["accuracy"], m["loglik"]))
        if best is None or (top["accuracy"], top["loglik"]) > (best["accuracy"], best["loglik"]):
            best = top
            incumbents.append(best)
        history.append({"generation": g, "best_accuracy": best["accuracy"],
                        "mean_accuracy": sum(m["accuracy"] for m in gen) / len(gen)})
    chosen, selection_accuracy = best, None
    if cfg.select:
        anchors = anchor_members(len(expert_dirs), dim)
        candidates: list[dict] = []
        for m in rows:  # in suggestion order: the anchors' scores come first (generation 0)
            wanted = any(m is i for i in incumbents) or any(np.allclose(m["alpha"], a)
                                                            for a in anchors)
            if wanted and not any(np.allclose(m["alpha"], c["alpha"]) for c in candidates):
                candidates.append(m)
        scored = [(ray.get(actors[0].score.remote(m["alpha"], "selection")), i, m)
                  for i, m in enumerate(candidates)]
        # best on the selection set; ties go to the earlier candidate (the base first)
        sel, _, chosen = max(scored, key=lambda s: (s[0]["accuracy"], s[0]["loglik"], -s[1]))
        selection_accuracy = sel["accuracy"]
    if own:
        for a in actors:
            ray.kill(a)
    members = [{"generation": r.config.get("generation"), "member": r.config.get("member"),
                "alpha": m["alpha"], "accuracy": m["accuracy"], "loglik": m["loglik"]}
               for r, m in zip(done, rows)]
    return FewShotResult(task, list(chosen["alpha"]), chosen["accuracy"], selection_accuracy,
                         history, members, len(rows), time.perf_counter() - t0,
                         sum(m["score_seconds"] for m in rows), asdict(cfg))
