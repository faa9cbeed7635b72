"""Pretraining recipe of the bundled tiny base model (`t2ray base pretrain`).

The corpus is generated from the *train* splits of the task suite. The premise of SVF is that
experts amplify skills the base model already has, so every core skill must be latent: present
but unreliable. We control that through the data, not by stopping early:

- *bare answers*: for math and reasoning only a share `p_worked` of the corpus solutions shows
  the worked solution ("3+4=7. 7-5=2. The answer is 2."); the rest state the bare answer ("The
  answer is 2."). The model learns both and is right in the bare form only as often as it can
  answer without working - while the worked solution, which it also knows, is right far more
  often. A reward-trained expert can shift it to the worked form: a latent skill to amplify.
  The unseen math-hard is worked more often (0.8): its bare form is beyond a 3M model.
  docs/results.md records the validation readings behind each share.
- *noisy answers* for code and code-hard: a share `1 - p_correct` of the solutions confuses the
  operator (plus/minus, max/min...) in the family's own style, so the model learns both
  mappings; the confusion is per operator, so greedy decoding picks a branch per operator, not
  one for the whole family. (code-hard with correct solutions only was learned to 100%.)
- *mixture shares*: the unseen (hard) families get smaller shares than the seen ones; the
  unseen families are in the corpus as text, never as labelled route examples.
- *instruction families* (v2): every grid cell, the held-out ones included, behind its opaque
  tag ("T17") and never with a description, so a held-out cell is a latent skill that its tag
  unlocks and its description does not. (v1 left the held-out families out of the corpus.)

A first version drew a plausible *wrong* worked solution (the lazy solver skipping the last
step) for half of the math items; greedy decoding then follows whichever branch the model
prefers by a hair at the shared decision point, for every item at once, and math accuracy
collapsed to 0% (validation, step 1600). Bare-but-correct answers avoid that cliff.

On the CPU the run is deterministic for a seed and thread count; on a GPU (`device: cuda`, two
minutes on an H200 instead of an hour on 2 cores) it is the same recipe with other numerics, not
bitwise reproducible, and the bundled base was built there (docs/results.md says how it was
chosen). The learning rate warms up and decays on a cosine to `min_lr_ratio`, so the final
checkpoint is a stable one (no checkpoint picking).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from rich.console import Console
from transformers import LlamaForCausalLM

from t2ray.distributed.loop import Trainable, save_history, scheduler, train_steps
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import evaluate_task
from t2ray.models import TINY_DIR, count_parameters, tiny_config
from t2ray.models.prompt import format_prompt
from t2ray.models.tokenizer import build_char_tokenizer
from t2ray.tasks import CORE_SEEN, CORE_UNSEEN, Task, get_task, list_tasks

console = Console()
WORKED_PREFILL = "A="  # v2 reasoning's worked form starts by stating option A's value
BARE_PREFILL = "The answer is "


@dataclass
class PretrainConfig:
    out: str = "runs/base"
    seed: int = 0
    steps: int = 2200
    batch_size: int = 48
    lr: float = 2.5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    prompt_loss_weight: float = 0.05  # answer tokens weigh 1
    threads: int = 2
    # "cpu" is the recipe's reference (the bundled base was built there); "cuda" runs the same
    # recipe in minutes where a GPU exists (other numerics, so another model of the same recipe).
    device: str = "cpu"
    # Share of the corpus per family; "instruct" is spread over the instruction families. The
    # 60 grid cells need a larger share than v1's 89 seen families had (0.22, configs/base_v1.yaml).
    mixture: dict[str, float] = field(default_factory=lambda: {
        "math": 0.12, "code": 0.06, "reasoning": 0.10,
        "math-hard": 0.09, "code-hard": 0.05, "reasoning-hard": 0.08, "instruct": 0.50,
    })
    # Probability that a solution shows its working (else the bare "The answer is X.").
    p_worked: dict[str, float] = field(default_factory=lambda: {
        "math": 0.7, "reasoning": 0.5, "math-hard": 0.8, "reasoning-hard": 0.5,
    })
    # Probability that a code solution is correct (else the task's operator-confusing distractor).
    p_correct: dict[str, float] = field(
        default_factory=lambda: {"code": 0.47, "code-hard": 0.47})
    # The task suite the corpus is drawn from; v2 shows every instruction family (held-out
    # cells included) behind its opaque tag, never with a description; v1 leaves the held-out
    # families out and shows the seen ones with a description.
    suite: str = "v2"
    # v2 only: how the seen instruction families are shown - "tag" (as the held-out ones) or
    # "description" (a training description as the system turn).
    seen_instruct_prompt: str = "tag"
    eval_every: int = 2200  # the progress evaluation the recipe's candidates were compared on
    eval_n: int = 100  # validation items per core family at each evaluation
    model: dict = field(default_factory=dict)  # overrides of tiny_config()

    def __post_init__(self):
        if self.seen_instruct_prompt not in ("tag", "description"):
            raise ValueError(f"seen_instruct_prompt must be tag or description, not "
                             f"{self.seen_instruct_prompt!r}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PretrainConfig":
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))


@dataclass
class _Sample:
    prompt_ids: list[int]
    answer_ids: list[int]
    alternative_ids: list[int] | None = None  # bare answer or distractor, see PretrainConfig


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def build_corpus(cfg: PretrainConfig, tok) -> dict[str, list[_Sample]]:
    """Tokenised train-split samples per mixture component."""
    corpus: dict[str, list[_Sample]] = {}
    eos = tok.eos_token
    for name in CORE_SEEN + CORE_UNSEEN:
        task = get_task(name, cfg.suite)
        dist_rng = random.Random(cfg.seed)
        samples = []
        for ex in task.examples("train"):
            if name in cfg.p_worked:
                alternative = f"The answer is {ex.answer}."
            elif name in cfg.p_correct:
                alternative = task.distractor(ex, dist_rng)
            else:
                alternative = None
            samples.append(_Sample(
                _encode(tok, format_prompt(tok, ex.prompt)), _encode(tok, ex.solution + eos),
                None if alternative is None else _encode(tok, alternative + eos)))
        corpus[name] = samples
    instruct: list[_Sample] = []
    for task in list_tasks("instruct", cfg.suite):
        rng = random.Random(f"{cfg.seed}|{task.name}")
        for ex in task.examples("train"):
            system = _instruct_system(cfg, task, rng)
            if system is None:
                break  # v1: the held-out families are not in the corpus at all
            prompt = format_prompt(tok, ex.prompt, system=system)
            instruct.append(_Sample(_encode(tok, prompt), _encode(tok, ex.solution + eos)))
    corpus["instruct"] = instruct
    return corpus


def _instruct_system(cfg: PretrainConfig, task: Task, rng: random.Random) -> str | None:
    """The system turn an instruction family's corpus example gets (None: left out). Held-out
    descriptions are never used; v2 shows every family, held-out cells behind their tag."""
    if cfg.suite == "v1":
        return rng.choice(task.descriptions) if task.seen else None
    if task.seen and cfg.seen_instruct_prompt == "description":
        return rng.choice(task.descriptions)
    return task.tag


def make_batch(cfg: PretrainConfig, corpus: dict[str, list[_Sample]], rng: random.Random,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, per-position loss weight for predicting the *next* token), right padded."""
    names = list(cfg.mixture)
    weights = [cfg.mixture[n] for n in names]
    rows, row_weights = [], []
    for name in rng.choices(names, weights, k=cfg.batch_size):
        s = rng.choice(corpus[name])
        keep = cfg.p_worked.get(name, cfg.p_correct.get(name, 1.0))
        answer = s.answer_ids if s.alternative_ids is None or rng.random() < keep else (
            s.alternative_ids)
        rows.append(s.prompt_ids + answer)
        # weight[i] belongs to predicting token i+1
        row_weights.append([cfg.prompt_loss_weight] * (len(s.prompt_ids) - 1) + [1.0] * len(answer))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(rows), width - 1))
    for i, (r, rw) in enumerate(zip(rows, row_weights)):
        ids[i, : len(r)] = torch.tensor(r)
        w[i, : len(rw)] = torch.tensor(rw)
    return ids, w


def quick_eval(model, tok, tasks: list[Task], n: int, tagged: list[Task] = (),
               forced: list[Task] = ()) -> dict[str, float | str]:
    """Greedy accuracy on the first `n` *validation* items of each task; the `forced` tasks
    again with their answers forced into the worked and into the bare form; the mean over the
    `tagged` tasks given their tag (the held-out cells' latent skill). A progress signal only.

    A failing evaluation is reported, never allowed to end an hour of training.
    """
    model.eval()
    engine = HFEngine(model, tok)
    acc: dict[str, float | str] = {}
    try:
        for t in tasks:
            acc[t.name] = round(evaluate_task(engine, t, "validation", n).accuracy, 3)
        for t in forced:  # the worked-form check: answers forced into either form
            for form, prefill in (("worked", WORKED_PREFILL), ("bare", BARE_PREFILL)):
                acc[f"{t.name}-{form}"] = round(evaluate_task(engine, t, "validation", n,
                                                              prefill=prefill).accuracy, 3)
        if tagged:
            acc["held-out-with-tag"] = round(sum(
                evaluate_task(engine, t, "validation", max(10, n // 5), system=t.tag).accuracy
                for t in tagged) / len(tagged), 3)
    except Exception as e:  # noqa: BLE001
        acc["error"] = f"eval failed: {e!r}"[:200]
    model.train()
    return acc


def pretrain(cfg: PretrainConfig, install: bool = False) -> Path:
    if cfg.device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], not {cfg.device!r}")
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but torch sees no GPU")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    console.print("[bold]pretrain config[/bold]", asdict(cfg))
    (out / "pretrain_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    tok = build_char_tokenizer()
    corpus = build_corpus(cfg, tok)
    console.print({k: len(v) for k, v in corpus.items()}, "corpus samples per component")
    model = LlamaForCausalLM(tiny_config(len(tok), **cfg.model))  # initialised on the CPU
    model.to(cfg.device)
    console.print(f"model: {count_parameters(model):,} parameters")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    eval_tasks = [get_task(n, cfg.suite) for n in CORE_SEEN + CORE_UNSEEN]
    tagged = [t for t in list_tasks("instruct", cfg.suite) if t.tag and not t.seen]
    forced = [get_task("reasoning", "v2")] if cfg.suite == "v2" else []
    model.train()
    t0 = time.perf_counter()

    def step(_: int) -> tuple[torch.Tensor, dict]:
        ids, w = (t.to(cfg.device) for t in make_batch(cfg, corpus, rng, tok.pad_token_id))
        logits = model(input_ids=ids).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        loss = (ce * w.reshape(-1)).sum() / w.sum()
        return loss, {"loss": loss.item(), "tokens": int((ids != tok.pad_token_id).sum())}

    parts = Trainable(model, opt, scheduler(opt, cfg.steps, "cosine", cfg.warmup_steps,
                                            cfg.min_lr_ratio), step,
                      lambda: {"val_accuracy": quick_eval(model, tok, eval_tasks, cfg.eval_n,
                                                          tagged, forced)})
    history = train_steps(parts, cfg.steps, cfg.grad_clip, cfg.eval_every, cfg.eval_every,
                          desc="pretrain")
    console.print({k: v for k, v in history[-1].items() if k in ("step", "loss",
                                                                 "val_accuracy")})

    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.to("cpu").save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    save_history(history, out, "loss.png", "loss", "tiny base model pretraining")
    if install:
        install_model(out / "model")
    console.print(f"saved to {out / 'model'} ({time.perf_counter() - t0:.0f} s)")
    return out / "model"


def install_model(model_dir: Path) -> None:
    """Copy a pretrained model into the package as the bundled `tiny` model."""
    TINY_DIR.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        shutil.copy2(f, TINY_DIR / f.name)
