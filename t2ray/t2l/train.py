"""Training the T2L hypernetwork, in-process or on Ray Train (DeepSpeed optional).

- `recon`: the generated adapters match a library of per-task LoRAs (PEFT directories, one per
  training task): L1 on element-wise z-scored A and B (`recon_target: ab`), or on the update
  delta W = B A itself (`delta_w`, scaled by its std per module type); both are in the reference.
- `sft`: end to end through the frozen base model. Each batch mixes `tasks_per_batch` training
  tasks, visited evenly (`task_batch`: every task once per epoch); every task gets one random
  description of its own, the hypernetwork turns the batch of
  descriptions into LoRAs in one forward, and each row of the language-model batch runs with its
  task's LoRA (`batched_lora`). Variant Z (text-to-SVF) trains this way only, each row running
  with its own expert vector on the factorized SVF path. Completion-only loss, plus the
  reference's L2 penalty on the generated A and B (or z).

Training tasks are the seen instruction families; the held-out families and their descriptions
never appear here. Validation reads seen tasks' validation splits. `task_embedding: one-hot`
replaces the description encoder by one vector per training task (the reference's capacity
check). A loss that blows up restarts the run from its last good state at half the learning
rate (`divergence_factor`, `max_restarts`; the restarts are in metrics.jsonl).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from t2ray.distributed.loop import (
    SCHEDULES,
    DivergenceGuard,
    Trainable,
    check_device,
    completion_batch,
    distributed,
    run_recipe,
    save_history,
    scheduler,
    sft_loss,
    train_device,
)
from t2ray.distributed.train import launch
from t2ray.engines.hf import HFEngine
from t2ray.eval.harness import answer_in_turns, verdicts_of
from t2ray.lora.peft_io import import_peft
from t2ray.lora.weights import LoraWeights, batched_lora
from t2ray.models import load_model, weights_fingerprint
from t2ray.models.prompt import prompt_ids
from t2ray.svf.apply import factorized
from t2ray.svf.ops import decompose_model
from t2ray.svf.targets import MLP as SVF_MLP
from t2ray.t2l.encoder import DEFAULT_ENCODER, DescriptionEncoder, OneHotTaskEncoder
from t2ray.t2l.generate import T2LCheckpoint, to_experts, to_loras
from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, lora_targets
from t2ray.tasks import get_task, list_tasks

OBJECTIVES = ("recon", "sft")
TASK_EMBEDDINGS = ("description", "one-hot")
RECON_TARGETS = ("ab", "delta_w")
VAL_DESCRIPTIONS = 5  # a validation family's items take turns over this many descriptions


def seen_instruct_tasks() -> list[str]:
    return [t.name for t in list_tasks("instruct") if t.seen]


@dataclass
class T2LTrainConfig:
    out: str = "runs/t2l"
    model: str = "tiny"
    variant: str = "M"
    objective: str = "sft"
    library: str | None = None  # recon targets: <library>/<task>/ PEFT adapters
    tasks: list[str] = field(default_factory=list)  # empty: every seen instruction family
    # Validation families: seen families left out of this run's training and read on their
    # validation split with their own descriptions (`val_heldout_accuracy`), the generalisation
    # reading a recipe sweep chooses by; held-out families are never one.
    val_tasks: list[str] = field(default_factory=list)
    encoder: str = DEFAULT_ENCODER
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # Z: SVF's MLP
    rank: int = 8
    lora_alpha: float = 16.0
    use_rslora: bool = False
    latent: int = 128
    head_in: int = 512
    steps: int = 300
    tasks_per_batch: int = 8  # the reference: 8 tasks x 1 example
    examples_per_task: int = 2
    lr: float = 1e-3
    # The reference: linear decay after 20% warmup, label smoothing 0.1 (lr 2.5e-5, far longer).
    schedule: str = "cosine"  # cosine or linear (t2ray.distributed.loop.SCHEDULES)
    warmup_ratio: float = 0.0  # share of the steps spent warming up
    label_smoothing: float = 0.0  # SFT only
    lora_dropout: float = 0.0  # SFT: dropout on the generated LoRAs' input (the reference 0.05)
    per_example_loss: bool = False  # SFT: mean over each example's tokens, then over examples
    task_embedding: str = "description"  # or "one-hot": one vector per training task
    recon_target: str = "ab"  # recon: z-scored A and B, or "delta_w" (B A)
    divergence_factor: float = 10.0  # a loss above this x the recent median restarts; 0: off
    max_restarts: int = 2
    weight_decay: float = 1e-2
    l2_reg: float = 1e-3  # SFT: penalty on the generated A and B (the reference)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tasks: int = 8  # seen tasks read on validation (their own descriptions)
    eval_n: int = 20
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 2
    deepspeed_stage: int | None = None
    # "cuda": base model, hypernetwork and loss on this worker's GPU (launch then asks Ray Train
    # for one GPU per worker). Not yet run on a GPU (docs/scaling.md).
    device: str = "cpu"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "T2LTrainConfig":
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))

    def task_names(self) -> list[str]:
        """The training tasks (the validation families excluded)."""
        return [t for t in (list(self.tasks) or seen_instruct_tasks())
                if t not in self.val_tasks]

    def validate(self) -> None:
        check_device(self.device)
        if self.device == "cuda" and self.variant == "Z":
            raise ValueError("device 'cuda' is not supported for text-to-SVF (variant Z) yet: "
                             "its SVD factors stay on the CPU")
        if self.schedule not in SCHEDULES or self.schedule == "constant":
            raise ValueError(f"schedule must be cosine or linear, not {self.schedule!r}")
        if not all(0 <= v < 1 for v in (self.warmup_ratio, self.label_smoothing,
                                         self.lora_dropout)):
            raise ValueError("warmup_ratio, label_smoothing and lora_dropout must lie in [0, 1)")
        if self.task_embedding not in TASK_EMBEDDINGS:
            raise ValueError(f"task_embedding must be one of {TASK_EMBEDDINGS}, "
                             f"not {self.task_embedding!r}")
        if self.recon_target not in RECON_TARGETS:
            raise ValueError(f"recon_target must be one of {RECON_TARGETS}, "
                             f"not {self.recon_target!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.variant == "Z" and self.objective != "sft":
            raise ValueError("text-to-SVF (variant Z) trains with objective 'sft' only")
        if self.objective == "recon" and not self.library:
            raise ValueError("reconstruction needs library= (a directory of per-task LoRAs)")
        unseen = [t for t in self.task_names() if not get_task(t).seen]
        if unseen:
            raise ValueError(f"held-out tasks may not be trained on: {unseen}")
        bad_val = [t for t in self.val_tasks if not get_task(t).seen]
        if bad_val:
            raise ValueError(f"validation families must be seen families (held-out families are "
                             f"for the test table only): {bad_val}")
        if self.val_tasks and self.task_embedding == "one-hot":
            raise ValueError("a one-hot task embedding cannot read a validation family")
        if self.tasks_per_batch > len(self.task_names()):
            raise ValueError(f"tasks_per_batch {self.tasks_per_batch} > "
                             f"{len(self.task_names())} training tasks")


def task_batch(tasks: list[str], k: int, step: int, seed: str) -> list[str]:
    """The `k` tasks of `step`: epochs of ceil(len(tasks) / k) steps walk a seeded permutation
    of the tasks, so every task comes once per epoch; an epoch's last batch, when k does not
    divide the task count, is topped up with other tasks drawn at random."""
    per_epoch = -(-len(tasks) // k)
    epoch, j = divmod(step, per_epoch)
    order = list(tasks)
    random.Random(f"{seed}|epoch{epoch}").shuffle(order)
    batch = order[j * k:(j + 1) * k]
    rest = [t for t in order if t not in batch]
    return batch + random.Random(f"{seed}|step{step}").sample(rest, k - len(batch))


def build_hypernet(cfg: T2LTrainConfig, base_config: dict, encoder_dim: int) -> HyperLoRA:
    targets = list(SVF_MLP) if cfg.variant == "Z" else cfg.targets
    n_layers, modules = lora_targets(base_config, targets)
    net = HyperLoRA(HyperConfig(cfg.variant, n_layers, modules, rank=cfg.rank,
                                encoder_dim=encoder_dim, latent=cfg.latent,
                                head_in=cfg.head_in))
    if cfg.variant == "Z":  # z = 0 is the identity of the reference parameterisation
        for head in net.heads.values():
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
    elif cfg.objective == "sft":
        init_heads_as_peft(net, torch.Generator().manual_seed(cfg.seed))
    return net


@torch.no_grad()
def init_heads_as_peft(net: HyperLoRA, generator: torch.Generator) -> None:
    """SFT starts from PEFT's own LoRA init, as the reference does: head weights zero, biases
    giving a Kaiming-uniform A and a zero B (L). M and S share one head between A and B, so the
    reference scales A's init down (by sqrt 2, and sqrt r for S's single rank row)."""
    r = net.cfg.rank
    for name, head in net.heads.items():
        fan_in, fan_out = net.cfg.modules[name]
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) on an (r, in) matrix
        head.weight.zero_()
        if net.cfg.variant == "L":
            a = torch.empty(r * fan_in).uniform_(-bound, bound, generator=generator)
            head.bias.copy_(torch.cat([a, torch.zeros(r * fan_out)]))
        else:
            width = head.bias.numel()
            a = torch.empty(width).uniform_(-bound, bound, generator=generator) / math.sqrt(2)
            head.bias.copy_(a if net.cfg.variant == "M" else a / math.sqrt(r))


def load_library(root: str | Path, tasks: list[str], rank: int,
                 fingerprint: str | None = None) -> dict[str, LoraWeights]:
    """The reconstruction targets: one LoRA per task, each checked against the base model."""
    loras = {}
    for task in tasks:
        path = Path(root) / task
        if not path.exists():
            raise FileNotFoundError(f"no LoRA for task {task!r} in the library ({path})")
        lora = import_peft(path, expect_fingerprint=fingerprint)
        if lora.rank != rank:
            raise ValueError(f"{path}: rank {lora.rank}, the hypernetwork emits rank {rank}")
        loras[task] = lora
    return loras


class ReconTargets:
    """A library's A and B stacked per module type, with per-element mean and std; with
    `delta_w`, its updates B A per module type and their std."""

    def __init__(self, library: dict[str, LoraWeights], layers: dict[str, list[str]],
                 target: str = "ab", device: torch.device | str = "cpu"):
        """`layers`: each module type's full name in every layer (`T2LCheckpoint.layers`)."""
        self.tasks, self.target = list(library), target
        self.a, self.b, self.stats = {}, {}, {}
        for m, names in layers.items():
            a = torch.stack([torch.stack([library[t].a[n] for n in names])
                             for t in self.tasks]).float().to(device)
            b = torch.stack([torch.stack([library[t].b[n] for n in names])
                             for t in self.tasks]).float().to(device)
            self.a[m], self.b[m] = a, b
            self.stats[m] = tuple((x.mean(0), x.std(0).clamp_min(1e-6)) if len(self.tasks) > 1
                                  else (torch.zeros_like(x[0]), torch.ones_like(x[0]))
                                  for x in (a, b))

        self.delta = {m: self.b[m] @ self.a[m] for m in self.a} if target == "delta_w" else {}
        self.delta_std = {m: d.std().clamp_min(1e-8) for m, d in self.delta.items()}

    def loss(self, outputs: dict, tasks: list[str]) -> torch.Tensor:
        rows = torch.tensor([self.tasks.index(t) for t in tasks])
        if self.target == "delta_w":
            return sum(((b @ a - self.delta[m][rows]) / self.delta_std[m]).abs().mean()
                       for m, (a, b) in outputs.items()) / len(outputs)
        total = 0.0
        for m, (a, b) in outputs.items():
            (mean_a, std_a), (mean_b, std_b) = self.stats[m]
            total = total + ((a - self.a[m][rows]) / std_a).abs().mean() + \
                ((b - self.b[m][rows]) / std_b).abs().mean()
        return total / len(outputs)


def build(cfg: T2LTrainConfig) -> Trainable:
    """Every component of a run from its config."""
    rank, world = distributed()
    torch.manual_seed(cfg.seed + rank)
    device = train_device(cfg.device)
    model, tok = load_model(cfg.model, device=str(device))
    for p in model.parameters():
        p.requires_grad_(False)
    tasks = {name: get_task(name) for name in cfg.task_names()}
    encoder = (OneHotTaskEncoder(list(tasks)) if cfg.task_embedding == "one-hot"
               else DescriptionEncoder(cfg.encoder))
    net = build_hypernet(cfg, model.config.to_dict(), encoder.dim).train().to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = scheduler(opt, cfg.steps, cfg.schedule, round(cfg.warmup_ratio * cfg.steps))
    ds_engine = None
    if cfg.deepspeed_stage is not None:
        from t2ray.distributed.deepspeed import initialize

        ds_engine, opt = initialize(net, opt, cfg.deepspeed_stage, cfg.grad_clip, world)
    forward = ds_engine or net
    fingerprint = weights_fingerprint(model)
    layers = _checkpoint(net, cfg, encoder, model, fingerprint).layers
    svd_cache = decompose_model(cfg.model, "mlp") if cfg.variant == "Z" else None
    train_sets = {n: t.examples("train") for n, t in tasks.items()}

    def draw(step: int) -> tuple[random.Random, list[str], dict]:
        """The step's tasks, one description each, and the hypernetwork's outputs for them."""
        rng = random.Random(f"{cfg.seed}|{step}|{rank}")
        names = task_batch(list(tasks), cfg.tasks_per_batch, step, f"{cfg.seed}|{rank}")
        descriptions = [rng.choice(tasks[n].descriptions) for n in names]
        return rng, names, forward(encoder.encode(descriptions).to(device))

    def recon_step(step: int) -> tuple[torch.Tensor, dict]:
        _, names, outputs = draw(step)
        loss = recon.loss(outputs, names)
        return loss, {"loss": loss.item()}

    def sft_step(step: int) -> tuple[torch.Tensor, dict]:
        rng, names, outputs = draw(step)
        examples = [(i, e) for i, n in enumerate(names)
                    for e in rng.sample(train_sets[n], cfg.examples_per_task)]
        answers = [tok(e.solution + tok.eos_token, add_special_tokens=False)["input_ids"]
                   for _, e in examples]
        ids, attn, comp = completion_batch([prompt_ids(tok, e.prompt) for _, e in examples],
                                           answers, tok.pad_token_id, device)
        if svd_cache is not None:
            experts = to_experts(outputs, svd_cache)
            adapted = factorized(model, svd_cache, [experts[i] for i, _ in examples])
            l2 = sum(z.square().mean() for z in outputs.values())
        else:
            loras = to_loras(outputs, cfg.rank, cfg.lora_alpha, cfg.use_rslora, layers=layers)
            adapted = batched_lora(model, [loras[i] for i, _ in examples], cfg.lora_dropout)
            l2 = sum(a.square().mean() + b.square().mean() for a, b in outputs.values())
        with adapted:
            logits = model(input_ids=ids, attention_mask=attn).logits
        nll = sft_loss(logits, ids, comp, cfg.label_smoothing, cfg.per_example_loss)
        loss = nll + cfg.l2_reg * l2 / len(outputs)
        return loss, {"loss": loss.item(), "nll": nll.item(), "tokens": int(attn.sum())}

    def validate() -> dict:
        net.eval()
        ckpt = _checkpoint(net, cfg, encoder, model, fingerprint)
        found = {"val_accuracy": validation_accuracy(
            ckpt, encoder, model, tok, sorted(tasks)[: cfg.eval_tasks], cfg.eval_n, svd_cache)}
        if cfg.val_tasks:
            found["val_heldout_accuracy"] = validation_accuracy(
                ckpt, encoder, model, tok, cfg.val_tasks, cfg.eval_n, svd_cache,
                n_descriptions=VAL_DESCRIPTIONS)
        net.train()
        return found

    recon = None
    if cfg.objective == "recon":
        recon = ReconTargets(load_library(cfg.library, list(tasks), cfg.rank, fingerprint),
                             layers, cfg.recon_target, device)
    def save(history: list[dict]) -> None:
        out = Path(cfg.out)
        _checkpoint(net, cfg, encoder, model, fingerprint).save(out / "checkpoint",
                                                                extra={"train": asdict(cfg)})
        save_history(history, out, "loss_curve.png", "loss",
                     f"T2L-{cfg.variant} ({cfg.objective})")

    step_fn = recon_step if cfg.objective == "recon" else sft_step
    return Trainable(net, opt, sched, step_fn, validate, ds_engine, save)


def t2l_train_loop(config: dict) -> dict:
    """One worker's run (in-process or under Ray Train)."""
    cfg = T2LTrainConfig(**config)
    guard = (DivergenceGuard(cfg.divergence_factor, max_restarts=cfg.max_restarts)
             if cfg.divergence_factor and cfg.deepspeed_stage is None and distributed()[1] == 1
             else None)
    return {"history": run_recipe(cfg, build, desc=f"t2l-{cfg.variant}-{cfg.objective}",
                                  guard=guard)}


def _checkpoint(net: HyperLoRA, cfg: T2LTrainConfig, encoder, model,
                fingerprint: str) -> T2LCheckpoint:
    return T2LCheckpoint(net, encoder.name, cfg.lora_alpha, cfg.use_rslora, cfg.model,
                         model.config.to_dict(), fingerprint)


def validation_accuracy(ckpt: T2LCheckpoint, encoder, model, tok, task_names: list[str],
                        n: int, svd_cache=None, n_descriptions: int = 1) -> float:
    """Mean exact-match accuracy over tasks on their first `n` validation items, the items
    taking turns over the task's first `n_descriptions` descriptions (each its own LoRA or
    expert)."""
    engine = HFEngine(model, tok, svd_cache=svd_cache)
    accs = []
    for name in task_names:
        task = get_task(name)
        examples = task.examples("validation", n)
        adapters = ckpt.generate(encoder, task.descriptions[:n_descriptions], svd_cache)
        verdicts = verdicts_of(task, examples, answer_in_turns(engine, task, examples, adapters))
        accs.append(sum(verdicts) / len(verdicts))
    return sum(accs) / len(accs)


def train_t2l(cfg: T2LTrainConfig, workers: int = 0, use_gpu: bool = False,
              max_failures: int = 1) -> dict:
    """`t2ray t2l train` / jobs/train_t2l.py. workers=0 runs in this process, else Ray Train."""
    cfg.validate()
    cfg.out = str(Path(cfg.out).resolve())
    if cfg.library:
        cfg.library = str(Path(cfg.library).resolve())
    return launch(t2l_train_loop, cfg, workers, use_gpu, max_failures)
