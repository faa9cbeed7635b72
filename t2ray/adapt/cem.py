"""Cross-entropy method over mixture weights alpha, and the same search as a Ray Tune `Searcher`.

As the reference does it: population 32, elite ratio 0.2, alpha clamped to [0, 1], initial mean
1/K and std 0.5, member 0 of every later generation is the incumbent best. Unlike the reference,
generation 0 also holds fixed anchors (`anchor_members`): alpha = 0, each expert alone and the
uniform mix, so the search can always fall back to the base or a single expert. Fitness is a tuple
(accuracy on the shots, mean log-likelihood of the correct answers), compared lexicographically,
so the log-likelihood only breaks accuracy ties.

`CEM` is a plain ask/tell optimiser (no Ray). `CEMSearcher` hands each generation's members to Ray
Tune as trials, which then run in parallel; the next generation starts when all have reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ray.tune.search import Searcher

from t2ray.adapt.anchors import anchor_members

Fitness = tuple[float, float]


@dataclass
class CEMConfig:
    dim: int  # K, or K x matrices for per-matrix alpha
    n_experts: int  # K, for the initial mean 1/K
    population: int = 32
    elite_ratio: float = 0.2
    init_std: float = 0.5
    min_std: float = 1e-3  # keeps the search alive once the elites agree
    generations: int = 50
    low: float = 0.0
    high: float = 1.0
    seed: int = 0
    anchors: bool = True  # generation 0 starts with `anchor_members`

    def __post_init__(self):
        if self.population < 2 or not 0 < self.elite_ratio <= 1:
            raise ValueError("CEM needs population >= 2 and 0 < elite_ratio <= 1")
        if self.dim < 1 or self.n_experts < 1 or self.dim % self.n_experts:
            raise ValueError("CEM needs n_experts >= 1 and dim a positive multiple of it")
        if self.anchors and self.population < self.n_experts + 2:
            raise ValueError(f"a population of {self.population} cannot hold generation 0's "
                             f"{self.n_experts + 2} anchors (base, each expert, uniform); use "
                             f"population >= {self.n_experts + 2} or anchors=False")

    @property
    def n_elite(self) -> int:
        return max(1, round(self.population * self.elite_ratio))


class CEM:
    """Ask for a generation, tell its fitnesses, repeat."""

    def __init__(self, cfg: CEMConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.mean = np.full(cfg.dim, 1.0 / cfg.n_experts)
        self.std = np.full(cfg.dim, cfg.init_std)
        self.generation = 0
        self.best: tuple[Fitness, np.ndarray] | None = None
        self.history: list[dict] = []  # per generation: best / mean fitness, mean, std

    @property
    def done(self) -> bool:
        return self.generation >= self.cfg.generations

    def ask(self) -> np.ndarray:
        """(population, dim) members, clamped; generation 0 starts with the anchors, and member
        0 of every later generation is the best so far."""
        members = self.rng.normal(self.mean, self.std, size=(self.cfg.population, self.cfg.dim))
        if self.best is not None:
            members[0] = self.best[1]
        elif self.cfg.anchors:
            anchors = anchor_members(self.cfg.n_experts, self.cfg.dim)
            members[: len(anchors)] = anchors
        return np.clip(members, self.cfg.low, self.cfg.high)

    def tell(self, members: np.ndarray, fitness: list[Fitness]) -> None:
        if len(fitness) != len(members):
            raise ValueError(f"{len(fitness)} fitness values for {len(members)} members")
        order = sorted(range(len(members)), key=lambda i: tuple(fitness[i]), reverse=True)
        elites = members[order[: self.cfg.n_elite]]
        self.mean = elites.mean(axis=0)
        self.std = np.maximum(elites.std(axis=0), self.cfg.min_std)
        top = order[0]
        if self.best is None or tuple(fitness[top]) > self.best[0]:
            self.best = (tuple(fitness[top]), members[top].copy())
        self.history.append({
            "generation": self.generation, "best_accuracy": self.best[0][0],
            "best_loglik": self.best[0][1],
            "mean_accuracy": float(np.mean([f[0] for f in fitness])),
            "mean_std": float(self.std.mean()),
        })
        self.generation += 1

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "generation": self.generation, "history": self.history,
                "best": None if self.best is None else [list(self.best[0]), self.best[1].tolist()],
                "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state(cls, state: dict) -> "CEM":
        cem = cls(CEMConfig(**state["config"]))
        cem.mean, cem.std = np.array(state["mean"]), np.array(state["std"])
        cem.generation, cem.history = state["generation"], state["history"]
        if state["best"] is not None:
            cem.best = (tuple(state["best"][0]), np.array(state["best"][1]))
        cem.rng.bit_generator.state = state["rng"]
        return cem


class CEMSearcher(Searcher):
    """CEM as a Ray Tune searcher: one trial per population member, a generation at a time.

    Trials receive `config["alpha"]` (a list of `dim` floats) and must report the metrics
    `accuracy` and `loglik`. `suggest` returns None while a generation is still running (Tune
    then waits) and `Searcher.FINISHED` after the last generation.
    """

    def __init__(self, cfg: CEMConfig):
        super().__init__(metric="accuracy", mode="max")
        self.cem = CEM(cfg)
        self._new_generation()

    def _new_generation(self) -> None:
        self._members = self.cem.ask()
        self._next = 0
        self._trial_member: dict[str, int] = {}
        self._fitness: dict[int, Fitness] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the search space is alpha, fixed by CEMConfig

    def suggest(self, trial_id: str):
        if self.cem.done:
            return Searcher.FINISHED
        if self._next >= len(self._members):
            return None  # wait for this generation to finish
        i = self._next
        self._next += 1
        self._trial_member[trial_id] = i
        return {"alpha": self._members[i].tolist(), "generation": self.cem.generation, "member": i}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        i = self._trial_member.pop(trial_id, None)
        if i is None:
            return
        # A failed trial counts as the worst fitness rather than stalling the generation.
        ok = not error and result is not None and "accuracy" in result
        self._fitness[i] = (float(result["accuracy"]), float(result.get("loglik", -np.inf))) \
            if ok else (-np.inf, -np.inf)
        if len(self._fitness) == len(self._members):
            self.cem.tell(self._members, [self._fitness[j] for j in range(len(self._members))])
            self._new_generation()

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.cem.state()))

    def restore(self, checkpoint_path: str) -> None:
        self.cem = CEM.from_state(json.loads(Path(checkpoint_path).read_text()))
        self._new_generation()
