"""The T2L table (table `t2l`): held-out instruction families, with descriptions no model saw.

Every method answers the test split of each held-out family. A family's descriptions take turns
over its test items (item i uses description i mod 5), so every description is scored once and
every item is answered once. Methods (DESIGN.md names):

- `base`: the base model, the bare input (no description).
- `base+desc`: the base model with the description as the system turn.
- `mt-lora`: one LoRA trained on all seen families, each prompt carrying a random description of
  its task as the system turn; scored with the held-out description in the prompt.
- `task-lora`: a LoRA trained on the held-out family's own train split (the oracle: it sees the
  task's data, which no T2L does), bare input.
- `t2l-recon-{L,M,S}`: the hypernetwork trained to reconstruct the library of per-task LoRAs of
  the seen families (`<out>/library/`, one LoRA per family, seed 0).
- `t2l-sft-{L,M,S}`, `t2svf`: trained end to end through the base model (T2L-SFT, text-to-SVF).
- `t2l-random-desc`: the checkpoints of the T2L-SFT variant chosen on validation
  (`sft_variant`) fed random strings of the same lengths.
- `t2l-nearest`: retrieval, the library LoRA of the training family whose description is
  nearest (encoder cosine).
- `t2l-onehot`: the capacity check, a hypernetwork (M) reconstructing the library from one
  vector per training family instead of a description; it can only answer the training
  families, so it has seen-family rows only.

Each described method's held-out answers are kept too, and compared with what the nearest
training family's operation would output on the same input (`nearest_agreement`): a T2L that
retrieves rather than composes answers like its nearest family.

Each trained artifact and each method's verdicts per seed are kept under `<out>`, so a rerun
resumes where it stopped. Greedy methods with fixed weights (`base`, `base+desc`) are scored
once. Nothing here reads a held-out family's descriptions during training, and tuning (the
settings in configs/t2l.yaml) reads validation splits only.
"""

from __future__ import annotations

import json
import random
import shutil
import string
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch
import yaml
from rich.console import Console
from tqdm import tqdm

from t2ray.distributed.train import ran_with
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import answer_in_turns, interval_fields, seeds_interval, verdicts_of
from t2ray.eval.results import (
    ResultRow,
    invocation,
    kept_json,
    merge_results,
    pivot_table,
    verdict_entry,
    write_verdicts,
)
from t2ray.eval.stats import mean_sd
from t2ray.experiments.seen import grid_label
from t2ray.lora.peft_io import import_peft
from t2ray.models import load_model
from t2ray.rl.trainer import TrainConfig
from t2ray.svf.ops import decompose_model
from t2ray.t2l.encoder import DEFAULT_ENCODER, DescriptionEncoder, load_encoder
from t2ray.t2l.generate import T2LCheckpoint
from t2ray.t2l.hypernet import count_trainable
from t2ray.t2l.train import T2LTrainConfig, seen_instruct_tasks, train_t2l
from t2ray.tasks import get_task, list_tasks

VARIANTS = ("L", "M", "S")
FIXED = ("base", "base+desc", "base+tag", "base+3shot")  # fixed weights: one score for all seeds
# T2LTrainConfig fields the table sets itself (a recipe may not)
TABLE_SET = {"out", "model", "seed", "threads", "tasks", "val_tasks", "variant", "objective",
             "library", "steps", "lr", "rank", "lora_alpha", "eval_every", "checkpoint_every",
             "task_embedding", "deepspeed_stage"}
SHOTS = 3  # base+3shot: demonstrations from the family's train split, in the system turn
console = Console()


def held_out_tasks() -> list[str]:
    return [t.name for t in list_tasks("instruct") if not t.seen]


SEEN_ONLY = ("t2l-onehot",)  # methods that cannot read a held-out description
MEAN = "held-out-mean"  # the row of the mean over the held-out families
# what a described method's rows carry a paired difference interval against (issue targets)
INTERVAL_REFS = ("base+desc", "mt-lora", "t2l-nearest", "t2l-random-desc", "task-lora")


def described_methods() -> list[str]:
    """The methods that turn a description into an adapter (read on seen families too)."""
    return [m for m in all_methods() if m.startswith(("t2l-recon", "t2l-sft"))
            or m in ("t2svf", *SEEN_ONLY)]


def reconstructs(method: str) -> bool:
    """Whether a hypernetwork method trains on the library (reconstruction) rather than SFT."""
    return method.startswith("t2l-recon-") or method == "t2l-onehot"


def seeds_of(method: str, seeds: list[int]) -> list[int]:
    """The seeds a method is scored on: the first only for those whose answers no seed changes
    (fixed weights, and retrieval from the seed-0 library)."""
    return seeds[:1] if method in (*FIXED, "t2l-nearest") else seeds


def seen_read_methods() -> list[str]:
    """The methods also read on the training families (fit and paraphrase): the described ones
    and retrieval, which on a training description is that family's own library LoRA (the
    level the issue's "within 10 points of the library" compares with)."""
    return [*described_methods(), "t2l-nearest"]


def all_methods() -> list[str]:
    return ["base", "base+desc", "base+tag", "base+3shot", "mt-lora", "task-lora", "t2l-nearest",
            *(f"t2l-recon-{v}" for v in VARIANTS), *(f"t2l-sft-{v}" for v in VARIANTS),
            "t2svf", "t2l-random-desc", *SEEN_ONLY]


@dataclass
class T2LTableConfig:
    model: str = "tiny"
    rank: int = 8  # every LoRA here: rank 8, alpha 16 on q_proj and v_proj (the T2L setting)
    lora_alpha: float = 16.0
    lora_steps: int = 80  # per-task LoRAs (library and oracle), SFT
    lora_lr: float = 0.01
    lora_prompts: int = 16
    mt_steps: int = 600  # the multi-task LoRA
    mt_lr: float = 0.003
    sft_steps: int = 600  # T2L-SFT and text-to-SVF
    recon_steps: int = 1000
    t2l_lr: float = 1e-3
    t2svf_lr: float = 1e-3
    n_test: int | None = None  # test items per family (default: the whole split)
    # Description-driven methods are also read on the training families: with their training
    # descriptions (fit) and with their held-back probe descriptions (paraphrase); 0 skips it.
    seen_n: int = 50
    threads: int = 2
    tasks: list[str] = field(default_factory=held_out_tasks)  # scored (held-out families)
    train_tasks: list[str] = field(default_factory=list)  # empty: every seen family
    # T2LTrainConfig fields for every end-to-end (SFT, text-to-SVF too) and every
    # reconstruction hypernetwork: the recipe `t2ray results t2l-tune` chose on validation.
    sft_recipe: dict = field(default_factory=dict)
    recon_recipe: dict = field(default_factory=dict)
    # Seen families that the tuning runs leave out of training and read on validation (the
    # generalisation reading a recipe is chosen by); the table's runs train on them.
    val_families: list[str] = field(default_factory=list)
    # The T2L-SFT variant chosen on validation: t2l-random-desc feeds its checkpoints noise,
    # and the demo (and the serving kit) ship its seed-0 checkpoint.
    sft_variant: str = "M"

    @property
    def chosen_sft(self) -> str:
        return f"t2l-sft-{self.sft_variant}"

    def training_tasks(self) -> list[str]:
        return list(self.train_tasks) or seen_instruct_tasks()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "T2LTableConfig":
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))

    def validate(self) -> None:
        seen = [t for t in self.tasks if get_task(t).seen]
        if seen:
            raise ValueError(f"the T2L table scores held-out families only, not {seen}")
        unseen = [t for t in self.training_tasks() if not get_task(t).seen]
        if unseen:
            raise ValueError(f"held-out families may not be trained on: {unseen}")
        fields = set(T2LTrainConfig.__dataclass_fields__) - TABLE_SET
        for name in ("sft_recipe", "recon_recipe"):
            bad = set(getattr(self, name)) - fields
            if bad:
                raise ValueError(f"{name}: {sorted(bad)} are not recipe fields (T2LTrainConfig "
                                 f"fields other than those the table sets: {sorted(TABLE_SET)})")
        T2LTrainConfig(val_tasks=self.val_families).validate()
        if self.sft_variant not in VARIANTS:
            raise ValueError(f"sft_variant must be one of {VARIANTS}, not {self.sft_variant!r}")

    def train_config(self, method: str, seed: int, out: Path, library: Path | None = None
                     ) -> T2LTrainConfig:
        """A hypernetwork method's training run: the table's settings, then its recipe."""
        if method == "t2svf":
            t = T2LTrainConfig(**self.sft_recipe, variant="Z", objective="sft",
                               steps=self.sft_steps, lr=self.t2svf_lr)
        else:
            objective = "recon" if reconstructs(method) else "sft"
            variant = "M" if method == "t2l-onehot" else method.split("-")[2]
            recipe = self.recon_recipe if objective == "recon" else self.sft_recipe
            t = T2LTrainConfig(**recipe, lr=self.t2l_lr, variant=variant,
                               objective=objective,
                               steps=self.recon_steps if objective == "recon" else self.sft_steps,
                               library=str(library) if objective == "recon" else None)
            if method == "t2l-onehot":
                t.task_embedding = "one-hot"
        t.out, t.model, t.seed, t.threads = str(out), self.model, seed, self.threads
        t.tasks = self.training_tasks()
        t.rank, t.lora_alpha = self.rank, self.lora_alpha
        t.eval_every, t.checkpoint_every = t.steps, t.steps
        return t


def demonstrations(task, k: int = SHOTS) -> str:
    """The first `k` train examples of a family as input -> output lines (a system turn)."""
    return "\n".join(f"{e.prompt}\nOutput: {e.solution}" for e in task.examples("train", k))


def random_description(like: str, rng: random.Random) -> str:
    """A string of random letters and spaces as long as `like` (the random-description control)."""
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in like).strip() or "x"


class T2LTable:
    def __init__(self, cfg: T2LTableConfig, out: Path):
        cfg.validate()
        self.cfg, self.out = cfg, Path(out)
        self.model, self.tok = load_model(cfg.model)
        self.svd_cache = decompose_model(cfg.model, "mlp")
        self.engine = HFEngine(self.model, self.tok, svd_cache=self.svd_cache, name=cfg.model)
        self._encoder = None
        self._encoders: dict[str, object] = {}  # a checkpoint's own encoder, by name
        self._last: tuple = (None, None)  # the adapter source loaded last: every family reuses it
        self._library_loras: dict = {}
        self._scored: dict[tuple[str, int], dict] = {}  # (method, seed) -> verdicts, read once

    def _load_once(self, key: Path, load):
        if self._last[0] != key:
            self._last = (key, load())
        return self._last[1]

    @property
    def encoder(self) -> DescriptionEncoder:
        if self._encoder is None:
            self._encoder = DescriptionEncoder()
        return self._encoder

    # --- training (each artifact once; a rerun reuses it)
    def _lora(self, run: Path, task: str, seed: int, steps: int, lr: float,
              describe: bool = False) -> Path:
        from t2ray.rl.launch import train

        if not (run / "lora").exists():
            c = self.cfg
            train(TrainConfig(out=str(run), model=c.model, task=task, policy="lora",
                              objective="sft", lora_rank=c.rank, lora_alpha=c.lora_alpha,
                              describe=describe, steps=steps, prompts_per_step=c.lora_prompts,
                              lr=lr, grad_clip=1.0, eval_every=steps, eval_n=10 if describe else 50,
                              checkpoint_every=steps, seed=seed, threads=c.threads), workers=0)
        return run / "lora"

    def library(self) -> Path:
        """One LoRA per seen family (seed 0): the reconstruction targets."""
        root = self.out / "library"
        todo = [t for t in self.cfg.training_tasks() if not (root / t).exists()]
        for task in tqdm(todo, desc="per-task LoRA library"):
            src = self._lora(self.out / "library-runs" / task, task, 0, self.cfg.lora_steps,
                             self.cfg.lora_lr)
            shutil.copytree(src, root / task)
        return root

    def checkpoint(self, method: str, seed: int) -> T2LCheckpoint:
        run = self.out / method / f"seed{seed}"
        library = self.library() if reconstructs(method) else None
        train_cfg = self.cfg.train_config(method, seed, run, library)
        if not ((run / "checkpoint").exists() and ran_with(run, train_cfg)):
            train_t2l(train_cfg, workers=0)
        return self._load_once(run, lambda: T2LCheckpoint.load(
            run / "checkpoint", expect_fingerprint=self.svd_cache.fingerprint))

    def lora(self, method: str, seed: int, task: str):
        """The trained LoRA of `mt-lora` (all training families) or `task-lora` (`task`)."""
        c = self.cfg
        if method == "mt-lora":
            run = self.out / "mt-lora" / f"seed{seed}"
            path = self._lora(run, ",".join(c.training_tasks()), seed, c.mt_steps, c.mt_lr,
                              describe=True)
        else:
            run = self.out / "task-lora" / task / f"seed{seed}"
            path = self._lora(run, task, seed, c.lora_steps, c.lora_lr)
        return self._load_once(run, lambda: import_peft(
            path, expect_fingerprint=self.svd_cache.fingerprint))

    def library_lora(self, family: str):
        if family not in self._library_loras:
            self._library_loras[family] = import_peft(
                self.library() / family, expect_fingerprint=self.svd_cache.fingerprint)
        return self._library_loras[family]

    def nearest_family(self, description: str) -> str:
        """The training family whose training description is closest to `description` in the
        encoder's space (cosine): what a retrieval baseline answers with."""
        names, index = self._description_index
        return names[int((index @ self.encoder.encode([description])[0]).argmax())]

    @cached_property
    def _description_index(self) -> tuple[list[str], torch.Tensor]:
        pairs = [(t, d) for t in self.cfg.training_tasks() for d in get_task(t).descriptions]
        return [t for t, _ in pairs], self.encoder.encode([d for _, d in pairs])

    # --- scoring
    def adapters(self, method: str, seed: int, task: str,
                 probes: bool = False) -> tuple[list, list[str | None]]:
        """Per description of `task` (its probe descriptions with `probes`): the adapter (LoRA,
        expert or None) and the system turn."""
        t = get_task(task)
        descriptions = t.probe_descriptions if probes else t.descriptions
        none = [None] * len(descriptions)
        if method == "base":
            return none, none
        if method == "base+desc":
            return none, list(descriptions)
        if method == "base+tag":  # the latent skill's ceiling: the cell's pretraining tag
            return none, [get_task(task).tag] * len(descriptions)
        if method == "base+3shot":  # the non-parametric alternative: demonstrations
            return none, [demonstrations(get_task(task))] * len(descriptions)
        if method == "t2l-nearest":  # retrieval: the library LoRA of the nearest family
            return [self.library_lora(self.nearest_family(d)) for d in descriptions], none
        if method == "mt-lora":
            return [self.lora(method, seed, task)] * len(descriptions), list(descriptions)
        if method == "task-lora":
            return [self.lora(method, seed, task)] * len(descriptions), none
        if method == "t2l-random-desc":
            rng = random.Random(f"{seed}|{task}")
            texts = [random_description(d, rng) for d in descriptions]
            source = self.checkpoint(self.cfg.chosen_sft, seed)
            return source.generate(self.encoder, texts), none
        ckpt = self.checkpoint(method, seed)
        if ckpt.encoder not in self._encoders:
            self._encoders[ckpt.encoder] = (self.encoder if ckpt.encoder == DEFAULT_ENCODER
                                            else load_encoder(ckpt.encoder))
        return ckpt.generate(self._encoders[ckpt.encoder], descriptions, self.svd_cache), none

    def verdicts(self, method: str, seed: int) -> dict[str, list[bool]]:
        """{family: per-test-item verdicts}, kept in `<out>/scores/<method>/seed<k>.json` and
        reused only for the same base model and test items."""
        if (method, seed) not in self._scored:
            key = {"base": self.svd_cache.fingerprint, "items": self._items_keys}
            self._scored[method, seed] = kept_json(
                self._score_path(method, seed), key,
                lambda: self._verdicts(method, seed, self.cfg.tasks, self.cfg.n_test))
        return self._scored[method, seed]

    def _score_path(self, method: str, seed: int) -> Path:
        return self.out / "scores" / method / f"seed{seed}.json"

    def seen_verdicts(self, method: str, seed: int, probes: bool) -> dict[str, list[bool]]:
        """The same on the training families' first `seen_n` test items, the adapters made from
        their training descriptions or (`probes`) from their held-back probe descriptions."""
        tasks = self.cfg.training_tasks()
        key = {"base": self.svd_cache.fingerprint, "probes": probes,
               "items": {t: get_task(t).items_fingerprint("test", self.cfg.seen_n)
                         for t in tasks}}
        name = f"seed{seed}-seen{'-probes' if probes else ''}.json"
        return kept_json(self.out / "scores" / method / name, key,
                         lambda: self._verdicts(method, seed, tasks, self.cfg.seen_n, probes))

    @cached_property
    def _items_keys(self) -> dict[str, str]:
        """Each scored family's test items, fingerprinted once (part of every resume key)."""
        return {t: get_task(t).items_fingerprint("test", self.cfg.n_test) for t in self.cfg.tasks}

    def _verdicts(self, method: str, seed: int, tasks: list[str], n: int | None,
                  probes: bool = False) -> dict[str, list[bool]]:
        """Verdicts per family; the held-out answers themselves go to
        `<out>/answers/<method>/seed<k>.json` (what `nearest_agreement` reads)."""
        found, answers = {}, {}
        for task_name in tasks:
            task = get_task(task_name)
            examples = task.examples("test", n)
            adapters, systems = self.adapters(method, seed, task_name, probes)
            texts = answer_in_turns(self.engine, task, examples, adapters, systems)
            found[task_name], answers[task_name] = verdicts_of(task, examples, texts), texts
        if tasks == self.cfg.tasks and not probes:
            path = self.out / "answers" / method / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"items": self._items_keys, "answers": answers}))
        return found

    def nearest_agreement(self, method: str, seed: int) -> dict[str, float] | None:
        """Per held-out family, the share of `method`'s answers that equal what the nearest
        training family (by the description each item was answered with) would output on that
        item's input; None when the answers were not kept for these items."""
        from t2ray.tasks.grid import answer

        path = self.out / "answers" / method / f"seed{seed}.json"
        kept = json.loads(path.read_text()) if path.exists() else None
        if kept is None or kept["items"] != self._items_keys:
            return None
        shares = {}
        for task_name, texts in kept["answers"].items():
            task = get_task(task_name)
            examples = task.examples("test", self.cfg.n_test)
            k = len(task.descriptions)
            near = [get_task(self.nearest_family(d)).cell for d in task.descriptions]
            mimic = [replace(e, answer=answer(*near[i % k], e.meta["input"].split()))
                     for i, e in enumerate(examples)]
            shares[task_name] = sum(verdicts_of(task, mimic, texts)) / len(texts)
        return shares

    def intervals(self, method: str, per_seed: dict, tasks: list[str], seeds: list[int]) -> dict:
        """A row's `ci95` (of its seeds' mean accuracy over `tasks`' items, in %) and, for a
        description-driven method, `diff_vs_<ref>_ci95` against each comparison method whose
        verdicts are kept (`INTERVAL_REFS`; a reference's seeds averaged per item): bootstraps
        over item contents, every seed's verdicts on an item kept together."""
        keys = [k for t in tasks for k, _ in get_task(t).keyed_examples("test", self.cfg.n_test)]
        by_seed = [[v for t in tasks for v in found[t]] for found in per_seed.values()]
        out = interval_fields(by_seed, keys)
        if method not in described_methods():
            return out
        for ref in INTERVAL_REFS:
            ref_seeds = seeds_of(ref, seeds)
            if ref == method or not all(self._score_path(ref, s).exists() for s in ref_seeds):
                continue
            ref_found = [self.verdicts(ref, s) for s in ref_seeds]
            base = torch.tensor([[float(v) for t in tasks for v in f[t]] for f in ref_found])
            lo, hi = seeds_interval(by_seed, keys, base.mean(0).tolist())
            out[f"diff_vs_{ref}_ci95"] = [round(100 * lo, 2), round(100 * hi, 2)]
        return out

    def params(self, method: str) -> int:
        if method in FIXED:
            return 0
        if method in ("mt-lora", "task-lora"):
            return self.lora(method, 0, self.cfg.tasks[0]).num_params
        if method == "t2l-nearest":  # one library LoRA per answer
            return self.library_lora(self.cfg.training_tasks()[0]).num_params
        source = self.cfg.chosen_sft if method == "t2l-random-desc" else method
        return count_trainable(self.checkpoint(source, 0).net)


def t2l_table(cfg: T2LTableConfig, out: Path, methods: list[str], seeds: list[int],
              results_json: Path | None = None, table_name: str = "t2l") -> list[dict]:
    bad = set(methods) - set(all_methods())
    if bad:
        raise ValueError(f"unknown methods {sorted(bad)}; choose from {all_methods()}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    console.print("[bold]T2L table config[/bold]", asdict(cfg))
    command = invocation()
    table = T2LTable(cfg, out)
    rows, entries = [], []
    for method in methods:  # every method scored first: the rows compare with each other
        if method not in SEEN_ONLY:
            for s in seeds_of(method, seeds):
                table.verdicts(method, s)
    for method in methods:
        params = table.params(method)
        if method not in SEEN_ONLY:
            per_seed = {s: table.verdicts(method, s)
                        for s in seeds_of(method, seeds)}
            entries += [verdict_entry(task, method, "test", found[task], seed)
                        for seed, found in per_seed.items() for task in cfg.tasks]
            agreement = ({} if method in FIXED
                         else {s: table.nearest_agreement(method, s) for s in per_seed})
            for task in [*cfg.tasks, MEAN]:
                accs = [100 * (sum(sum(v) / len(v) for v in found.values()) / len(found)
                               if task == MEAN else sum(found[task]) / len(found[task]))
                        for found in per_seed.values()]
                m, sd = mean_sd(accs)
                agree = [sum(a.values()) / len(a) if task == MEAN else a[task]
                         for a in agreement.values() if a]
                extra = ({"nearest_agreement": round(100 * sum(agree) / len(agree), 2)}
                         if agree else {})
                extra.update(table.intervals(method, per_seed, [task] if task != MEAN
                                             else cfg.tasks, seeds))
                rows.append(ResultRow(table_name, task, method, round(m, 2), round(sd, 2),
                                      len(accs), params, command, extra=extra,
                                      n=len(next(iter(per_seed.values()))[cfg.tasks[0]])))
            console.print(f"{method:>16}: {rows[-1].mean:.1f} +- {rows[-1].sd:.1f}% "
                          "mean over the held-out families")
        if cfg.seen_n and method in seen_read_methods():
            for label, probes in (("seen-mean", False), ("seen-paraphrase-mean", True)):
                found = {s: table.seen_verdicts(method, s, probes)
                         for s in seeds_of(method, seeds)}
                entries += [verdict_entry(f"{t} [{label}]", method, "test", v[t], s)
                            for s, v in found.items() for t in v]
                m, sd = mean_sd([100 * sum(sum(x) / len(x) for x in v.values()) / len(v)
                                 for v in found.values()])
                rows.append(ResultRow(table_name, label, method, round(m, 2), round(sd, 2),
                                      len(found), params, command, n=cfg.seen_n))
    text = summary_table(rows) + "\n" + pivot_table(rows)
    (out / "table.md").write_text(text)
    (out / "rows.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    console.print(text)
    shown = rows
    if results_json:  # the rows, and beside them the per-item verdicts behind them
        merge_results(results_json, rows)
        write_verdicts(Path(results_json).parent / "scores" / f"{table_name}.jsonl.gz",
                       table_name, entries, command)
        shown = [ResultRow.from_dict(d) for d in json.loads(Path(results_json).read_text())
                 if d["table"] == table_name]
    plot_cells(shown, cfg.tasks, out / "cells.png", table_name)
    return rows


def plot_cells(rows: list[ResultRow], tasks: list[str], path: Path, title: str) -> None:
    """A heatmap of accuracy, method x held-out family (and the held-out mean): the table's
    rows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*tasks, MEAN]
    by = {(r.method, r.task): r.mean for r in rows}
    methods = [m for m in dict.fromkeys(r.method for r in rows) if (m, MEAN) in by]
    if not methods:
        return
    grid = [[by.get((m, t), float("nan")) for t in cols] for m in methods]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 0.9 + 0.38 * len(methods)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 60 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_title(f"{title}: test accuracy %, seed mean", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(rows: list[ResultRow]) -> str:
    """One line per method: parameters, the mean over held-out families (mean +- sd over
    seeds), the seen-family and paraphrase means, and the held-out mean as a share of the
    per-task (oracle) LoRAs' and of the tag ceiling's (`base+tag`) when they were scored."""
    by = {(r.method, r.task): r for r in rows}
    means = {r.method: r for r in rows if r.task == MEAN}
    refs = [(m, means[m].mean) for m in ("task-lora", "base+tag") if m in means]
    lines = ["| method | params | held-out mean (%) | seen | seen paraphrases | "
             + " | ".join(f"of {m}" for m, _ in refs) + " |",
             "|---|---|---|---|---|" + "---|" * len(refs)]
    for method in dict.fromkeys(r.method for r in rows):
        r = means.get(method)
        seen = [f"{by[method, t].mean:.1f}" if (method, t) in by else ""
                for t in ("seen-mean", "seen-paraphrase-mean")]
        shares = [f"{100 * r.mean / v:.0f}%" if r and v else "" for _, v in refs]
        held = f"{r.mean:.1f} +- {r.sd:.1f} ({r.n_seeds} seeds)" if r else "(seen only)"
        params = next(x.params for x in rows if x.method == method)
        lines.append(f"| {method} | {params:,} | {held} | {' | '.join(seen + shares)} |")
    return "\n".join(lines) + "\n"


def tune_t2l(cfg: T2LTableConfig, method: str, grid: dict[str, list], out: Path,
             table_out: Path, seed: int = 0) -> dict:
    """Train a hypernetwork `method` for every point of `grid` (T2LTrainConfig fields over the
    table's recipe) without the validation families, and read each on them (validation split,
    their own descriptions): `val_heldout_accuracy`, the generalisation reading the choice is
    made by, beside `val_accuracy` on training families (the fit). The test split and the
    held-out families are never read. Reconstruction reads the table's library (`table_out`).
    A finished point is reused when it ran with these settings; the record of every point is
    `<out>/<method>/tuning.json`."""
    from itertools import product

    from rich.table import Table

    if not cfg.val_families:
        raise ValueError("tuning needs val_families: seen families to leave out and read")
    if method not in described_methods() or method in SEEN_ONLY:
        raise ValueError(f"{method!r} is not a description-driven hypernetwork method")
    out = Path(out)
    library = T2LTable(cfg, table_out).library() if reconstructs(method) else None
    keys = list(grid)
    points = []
    for values in product(*(grid[k] for k in keys)):
        fields = dict(zip(keys, values))
        run = out / method / grid_label(fields)
        t = replace(cfg.train_config(method, seed, run, library), **fields,
                    val_tasks=list(cfg.val_families))
        if not ((run / "checkpoint").exists() and ran_with(run, t)):
            train_t2l(t, workers=0)
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        points.append({**fields, "val_heldout_accuracy": last["val_heldout_accuracy"],
                       "val_accuracy": last["val_accuracy"], "run": str(run)})
    record = out / method / "tuning.json"
    kept = json.loads(record.read_text())["points"] if record.exists() else []
    points = [p for p in kept if p["run"] not in {q["run"] for q in points}] + points
    best = max(points, key=lambda p: p["val_heldout_accuracy"])
    summary = {"method": method, "seed": seed, "val_families": cfg.val_families,
               "points": points, "selected": best}
    record.write_text(json.dumps(summary, indent=1))
    shown = Table("point", "validation families (%)", "training families (%)",
                  title=f"{method}: validation only, seed {seed}")
    for p in points:
        shown.add_row(Path(p["run"]).name, f"{100 * p['val_heldout_accuracy']:.1f}",
                      f"{100 * p['val_accuracy']:.1f}")
    console.print(shown)
    console.print(f"selected: {Path(best['run']).name}")
    choice = method_choice(out)
    if len(choice["methods"]) > 1:
        console.print("best point of each tuned method on the validation families: " + ", ".join(
            f"{m} {100 * v:.1f}" for m, v in choice["methods"].items())
            + f"; chosen: {choice['chosen']}")
    return summary


def method_choice(out: Path) -> dict:
    """Across the methods tuned under `out` (e.g. the SFT variants L, M and S): each one's best
    validation-family reading and the method with the highest (the variant the table ships)."""
    best = {}
    for record in sorted(Path(out).glob("*/tuning.json")):
        summary = json.loads(record.read_text())
        best[summary["method"]] = summary["selected"]["val_heldout_accuracy"]
    return {"methods": best, "chosen": max(best, key=best.get) if best else None}
