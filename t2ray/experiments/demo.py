"""`t2ray demo` (= `make demo`): the whole pipeline on the embedded default, end to end.

decompose -> train the math, code and reasoning experts, the classifier expert and the LoRA
baselines (a short preset) -> seen tasks (base / LoRA / SVF) -> unseen families (base / LoRA /
prompt / classifier / few-shot) -> tables and plots under runs/<timestamp>/.

Trained artifacts are cached per base-model fingerprint under runs/demo-artifacts/ and reused
(the demo says so), so a second run only evaluates.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from t2ray.adapt.fewshot import FewShotConfig
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import evaluate_task
from t2ray.eval.results import ResultRow, invocation
from t2ray.experiments.unseen import CLASSIFIER, EXPERT_CATEGORIES, run_eval
from t2ray.lora.peft_io import import_peft
from t2ray.models import TINY, load_model
from t2ray.rl.trainer import TrainConfig
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertLibrary, ExpertVector
from t2ray.tasks import CORE_SEEN, CORE_UNSEEN, get_task

console = Console()
UNSEEN_INSTRUCT_DEMO = "reverse-word"  # a held-out instruction family
# The v2 T2L table's settings: the demo's T2L is that table's chosen SFT variant, seed 0.
T2L_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "t2l_v2.yaml"


@dataclass
class DemoPreset:
    steps: int = 12
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    lr: float = 0.02
    lora_lr: float = 0.001
    n_test: int = 200  # test items per task (the full splits are for docs/results.md)
    shots: int = 10
    population: int = 8
    generations: int = 2
    t2l_steps: int | None = None  # None: the v2 table's (T2L_CONFIG), the same checkpoint

    def fewshot(self) -> FewShotConfig:
        return FewShotConfig(shots=self.shots, select=self.shots, population=self.population,
                             generations=self.generations)


PRESETS = {"default": DemoPreset(),
           "smoke": DemoPreset(steps=1, prompts_per_step=2, samples_per_prompt=2, n_test=4,
                               shots=2, population=5, generations=1, t2l_steps=2)}


def _train_once(cfg: TrainConfig, artifact: Path) -> None:
    from t2ray.rl.launch import train

    if artifact.exists():
        console.print(f"[dim]reusing {artifact}[/dim]")
        return
    train(cfg, workers=0)


def train_artifacts(model: str = TINY, preset: str = "default") -> tuple[Path, SVDCache]:
    """The demo's trained artifacts on `model`: the math, code and reasoning experts and the
    classifier expert (library `experts/`), one LoRA per family (`train/lora-<family>/lora`) and a
    T2L checkpoint (`t2l/checkpoint`), trained once per base fingerprint and preset under
    runs/demo-artifacts/ and reused after. Returns (artifact directory, SVD cache)."""
    from t2ray.svf.ops import decompose_model
    from t2ray.t2l.train import train_t2l

    p = PRESETS[preset]
    cache = decompose_model(model, "mlp")
    art = Path("runs") / "demo-artifacts" / f"{cache.fingerprint}-{preset}"
    shared = dict(model=model, steps=p.steps, prompts_per_step=p.prompts_per_step,
                  samples_per_prompt=p.samples_per_prompt, baseline="group", grad_clip=1.0,
                  eval_every=p.steps, eval_n=max(4, p.n_test // 4), checkpoint_every=p.steps)
    lib = ExpertLibrary(art / "experts")
    # the classifier scores every label of its closed set (configs/seen.yaml, tasks: route)
    classifier = dict(label_rollouts="all", samples_per_prompt=1, logprob_reduction="mean")
    for name in (*EXPERT_CATEGORIES, CLASSIFIER):
        run = art / "train" / f"svf-{name}"
        _train_once(TrainConfig(out=str(run), task=name, policy="svf", lr=p.lr,
                                svd_cache=str(cache.root),
                                **{**shared, **(classifier if name == CLASSIFIER else {})}),
                    run / "expert")
        if name not in lib.names():
            lib.add(name, ExpertVector.load(run / "expert"))
    for name in EXPERT_CATEGORIES:
        run = art / "train" / f"lora-{name}"
        _train_once(TrainConfig(out=str(run), task=name, policy="lora", lr=p.lora_lr, **shared),
                    run / "lora")
    if (art / "t2l" / "checkpoint").exists():
        console.print(f"[dim]reusing {art / 't2l' / 'checkpoint'}[/dim]")
    else:  # T2L-SFT on the seen instruction families, as the v2 table trains its seed 0
        train_t2l(demo_t2l_config(model, p, art / "t2l"))
    return art, cache


def demo_t2l_config(model: str, p: DemoPreset, out: Path):
    """The v2 T2L table's training run of its chosen SFT variant on seed 0 (configs/t2l_v2.yaml,
    or the table's defaults outside a checkout), on `model`, shortened by the preset."""
    from t2ray.experiments.t2l import T2LTableConfig

    table = T2LTableConfig.from_yaml(T2L_CONFIG) if T2L_CONFIG.exists() else T2LTableConfig()
    t = table.train_config(table.chosen_sft, 0, out, None)
    t.model = model
    if p.t2l_steps is not None:
        t.steps = t.eval_every = t.checkpoint_every = p.t2l_steps
    return t


def kit_sources(model: str = TINY, preset: str = "default",
                fewshot_task: str = "math-hard") -> dict:
    """What the serving kit is built from: the demo's artifacts (trained if missing), one
    few-shot profile, found by `run_eval`'s few-shot strategy on `fewshot_task` (which writes
    the profile as `t2ray eval --strategy fewshot` does), and the routers' thresholds chosen on
    the routing task's validation split."""
    from t2ray.adapt.router import calibrate_routers

    p = PRESETS[preset]
    art, cache = train_artifacts(model, preset)
    out = art / "kit-fewshot"
    run_eval(model, art / "experts", [fewshot_task], ["fewshot"], [0], out, str(cache.root),
             p.n_test, p.fewshot())
    base, tok = load_model(model)
    classifier = ExpertLibrary(art / "experts").get(CLASSIFIER,
                                                    expect_fingerprint=cache.fingerprint)
    routing = calibrate_routers(HFEngine(base, tok, svd_cache=cache, name=model), classifier)
    return {"fingerprint": cache.fingerprint, "routing": routing,
            "experts": {n: art / "experts" / n for n in (*EXPERT_CATEGORIES, CLASSIFIER)},
            "loras": {n: art / "train" / f"lora-{n}" / "lora" for n in EXPERT_CATEGORIES},
            "profiles": {fewshot_task: out / "profiles" / f"{fewshot_task}-seed0"},
            "t2l": art / "t2l" / "checkpoint"}


def run_pipeline(out: Path | None = None, preset: str = "default",
                 model: str = TINY) -> dict[str, list[ResultRow]]:
    from t2ray.distributed.ray_env import ensure_ray

    p = PRESETS[preset]
    out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    console.print(f"[bold]t2ray demo[/bold] ({preset} preset) -> {out}")
    ensure_ray(num_cpus=2)
    command = invocation()
    art, cache = train_artifacts(model, preset)
    lib = ExpertLibrary(art / "experts")

    base, tok = load_model(model)
    engine = HFEngine(base, tok, svd_cache=cache, name=model)

    def score(task: str, method: str) -> ResultRow:
        family = get_task(task).family
        adapter = {"base": lambda: None,
                   "svf-rl": lambda: lib.get(family, expect_fingerprint=cache.fingerprint),
                   "lora-rl": lambda: import_peft(art / "train" / f"lora-{family}" / "lora",
                                                  expect_fingerprint=cache.fingerprint),
                   }[method]()
        with engine.adapted(adapter):
            row = evaluate_task(engine, get_task(task), "test", p.n_test)
        return ResultRow.from_eval(row, "seen" if task in CORE_SEEN else "unseen", method,
                                   command)

    seen = [score(t, m) for t in CORE_SEEN for m in ("base", "lora-rl", "svf-rl")]
    adaptive = run_eval(model, art / "experts", list(CORE_UNSEEN),
                        ["none", "prompt", "classifier", "fewshot"], [0], out / "unseen",
                        str(cache.root), p.n_test, p.fewshot())
    unseen = [score(t, "lora-rl") for t in CORE_UNSEEN] + adaptive
    tables = {"seen": seen, "unseen": unseen,
              "t2l": _t2l_on_an_unseen_description(art, out, model, p, engine, command,
                                                   cache.fingerprint)}
    (out / "demo_results.json").write_text(json.dumps(
        {"preset": asdict(p), "tables": {k: [r.as_dict() for r in v] for k, v in tables.items()},
         "seconds": round(time.perf_counter() - t_start, 1)}, indent=1))
    for name, rows in tables.items():
        _print(name, rows, p.n_test)
    console.print("the full tables (3 seeds, whole test splits, intervals): docs/results.md; "
                  f"rows in docs/results.json, tables {', '.join(FULL_TABLES.values())}; "
                  "per-item verdicts in docs/scores/")
    console.print(f"demo finished in {time.perf_counter() - t_start:.0f} s; tables in {out}")
    return tables


def _t2l_on_an_unseen_description(art: Path, out: Path, model: str, p: DemoPreset,
                                  engine: HFEngine, command: str,
                                  fingerprint: str) -> list[ResultRow]:
    """Write the adapter of a held-out family's description with the demo's T2L checkpoint and
    score it against the base model on that family."""
    from t2ray.lora.peft_io import export_peft
    from t2ray.t2l.encoder import load_encoder
    from t2ray.t2l.generate import T2LCheckpoint

    run = art / "t2l"
    ckpt = T2LCheckpoint.load(run / "checkpoint", expect_fingerprint=fingerprint)
    task = get_task(UNSEEN_INSTRUCT_DEMO)
    description = task.descriptions[0]
    lora = ckpt.generate(load_encoder(ckpt.encoder), [description])[0]
    export_peft(lora, out / "t2l_adapter", base_model=model, base_fingerprint=fingerprint)
    console.print(f"T2L adapter for the unseen description {description!r} -> "
                  f"{out / 't2l_adapter'}")
    rows = []
    for method, adapter in (("base", None), (f"t2l-sft-{ckpt.net.cfg.variant}", lora)):
        with engine.adapted(adapter):
            row = evaluate_task(engine, task, "test", p.n_test)
        rows.append(ResultRow.from_eval(row, "t2l", method, command))
    return rows


# The full v2 tables (3 seeds, whole test splits) that the demo's short runs are set beside.
FULL_TABLES = {"seen": "seen-v2", "unseen": "unseen-v2", "t2l": "t2l-v2"}
RESULTS_JSON = Path(__file__).resolve().parents[2] / "docs" / "results.json"


def _full_means(table: str) -> dict[tuple[str, str], float]:
    """(task, method) -> mean of the full table's row, when this checkout holds docs/."""
    if not RESULTS_JSON.exists():
        return {}
    return {(r["task"], r["method"]): r["mean"] for r in json.loads(RESULTS_JSON.read_text())
            if r["table"] == table}


def _print(name: str, rows: list[ResultRow], n: int) -> None:
    methods = list(dict.fromkeys(r.method for r in rows))
    tasks = list(dict.fromkeys(r.task for r in rows))
    full = _full_means(FULL_TABLES[name])
    t = Table("task", *methods, title=f"{name} tasks (suite v2): accuracy % on {n} test items "
              f"per task" + (f"; in brackets the full table {FULL_TABLES[name]}" if full else ""))
    for task in tasks:
        cells = {r.method: f"{r.mean:.1f}" + (f" ({full[task, r.method]:.1f})"
                                              if (task, r.method) in full else "")
                 for r in rows if r.task == task}
        t.add_row(task, *(cells.get(m, "") for m in methods))
    console.print(t)
