"""The RL / SFT training recipe for SVF experts and the LoRA baseline.

Reads top to bottom: components built once from the config (policy, rollout engine, objective,
optimiser, schedule) -> the shared loop (`distributed.loop.train_steps`: step, validate, report,
checkpoint) -> save the expert or LoRA. `train_loop` runs in-process or as a Ray Train worker
(then each worker generates its share of the rollouts and gradients are averaged across workers).
"""

from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from t2ray.distributed.loop import (
    Trainable,
    check_device,
    completion_batch,
    distributed,
    resuming,
    run_recipe,
    save_history,
    scheduler,
    sft_loss,
    train_device,
)
from t2ray.distributed.metrics import trainable_fp32_bytes
from t2ray.engines.base import Completion, Engine, label_scores
from t2ray.engines.factory import ENGINES
from t2ray.engines.hf import HFEngine
from t2ray.engines.lockstep import LockstepEngine
from t2ray.eval.harness import evaluate_task, max_new_tokens_for
from t2ray.models import load_model
from t2ray.models.prompt import Prompt, prompt_ids
from t2ray.rl.policy import LoraPolicy, SVFPolicy, load_trainable, trainable_copy
from t2ray.rl.reinforce import ReinforceConfig, reinforce_loss
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import SVFParam
from t2ray.tasks import get_task
from t2ray.tasks.rewards import RewardCache


@dataclass
class TrainConfig:
    out: str = "runs/expert"
    model: str = "tiny"
    task: str = "math"  # or a comma list: one policy on the union of the tasks' train splits
    policy: str = "svf"  # "svf" or "lora"
    objective: str = "rl"  # "rl" (REINFORCE) or "sft" (next token on reference solutions)
    svd_cache: str | None = None  # required for policy "svf"
    parameterisation: str = "reference"
    max_mult: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 32.0
    # Each prompt carries a random description of its task as the system turn, and validation
    # the task's first one: a policy that learns to follow descriptions (the multi-task LoRA).
    describe: bool = False
    steps: int = 60
    prompts_per_step: int = 32  # over all workers
    samples_per_prompt: int = 1
    temperature: float = 1.0  # 0 = greedy rollouts (the reference)
    # Closed label sets only: "sample" draws samples_per_prompt labels per prompt; "all" scores
    # every label once, weighted by its probability at `temperature` (the expected gradient over
    # the set, so a prompt whose samples would all draw one label still teaches something).
    label_rollouts: str = "sample"
    kl_coef: float = 0.0
    kl_form: str = "pi||ref, token-mean"  # or "ref||pi, sequence-sum" (t2ray.rl.reinforce)
    baseline: str = "none"
    logprob_reduction: str = "sum"
    optimizer: str = "adamw-cosine"  # or "adam-constant" (the reference's preset)
    lr: float = 2e-3
    grad_clip: float = 1e-3  # the reference clips the gradient norm at 1e-3
    eval_every: int = 20
    eval_n: int = 200  # validation items; the test split is never touched here
    checkpoint_every: int = 10
    seed: int = 0
    threads: int = 2
    deepspeed_stage: int | None = None
    # rollouts and validation: "hf" (the policy's model in this process) or "vllm" (one vLLM
    # engine actor for the run, following z; it replaces the lock-step engine under ZeRO-3)
    engine: str = "hf"
    engine_cpus: float = 1.0  # the vLLM actor's Ray CPUs
    engine_gpus: float | None = None  # its GPUs (None: one per tensor-parallel rank on CUDA)
    # "cuda": the policy, its rollouts (HF engine) and its loss on this worker's GPU (launch
    # then asks Ray Train for one GPU per worker). Not yet run on a GPU (docs/scaling.md).
    device: str = "cpu"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))

    def validate(self) -> None:
        if self.policy not in ("svf", "lora"):
            raise ValueError(f"policy must be 'svf' or 'lora', not {self.policy!r}")
        if self.objective not in ("rl", "sft"):
            raise ValueError(f"objective must be 'rl' or 'sft', not {self.objective!r}")
        if self.policy == "svf" and not self.svd_cache:
            raise ValueError("an SVF policy needs svd_cache (run `t2ray svf decompose`)")
        check_device(self.device)
        if self.device == "cuda" and self.deepspeed_stage == 3:
            raise ValueError("device 'cuda' with ZeRO-3 is not supported yet: the lock-step "
                             "engine builds its batches on the CPU; use ZeRO 0-2")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if self.optimizer not in ("adamw-cosine", "adam-constant"):
            raise ValueError(f"unknown optimizer preset {self.optimizer!r}")
        if self.deepspeed_stage == 3 and self.policy == "lora":
            raise ValueError("ZeRO-3 is supported for SVF policies only: the LoRA baseline "
                             "wraps base layers whose weights ZeRO-3 partitions; use stage 0-2")
        labelled = [get_task(name).labels is not None for name in self.task.split(",")]
        if any(labelled) and not all(labelled):
            raise ValueError("tasks with a closed label set cannot share a run with open ones")
        if all(labelled) and self.describe:
            raise ValueError("label-set rollouts score the bare question; describe needs open "
                             "answers")
        if all(labelled) and self.deepspeed_stage == 3:
            raise ValueError("label-set rollouts score through the HF engine; use ZeRO 0-2")
        if self.label_rollouts not in ("sample", "all"):
            raise ValueError(f"label_rollouts must be 'sample' or 'all', not "
                             f"{self.label_rollouts!r}")
        if self.label_rollouts == "all":
            if not all(labelled):
                raise ValueError("label_rollouts 'all' needs tasks with a closed label set")
            if self.samples_per_prompt != 1:
                raise ValueError("label_rollouts 'all' scores every label once per prompt; set "
                                 "samples_per_prompt to 1")
            if self.temperature <= 0:
                raise ValueError("label_rollouts 'all' weights labels by their probability; it "
                                 "needs temperature > 0")
            if self.logprob_reduction != "mean":
                raise ValueError("label_rollouts 'all' weights labels by their per-token "
                                 "log-probability; the loss must use the same "
                                 "(logprob_reduction: mean)")


@dataclass
class Selection:
    """The best validation candidate so far. Candidate 0 is the identity (the base model
    itself), and a later one replaces the best only when strictly better, so what a run ships
    is never worse than base on validation. Written to `path` at each new best, so a restarted
    worker keeps it."""

    path: Path
    base_val_accuracy: float | None = None
    val_accuracy: float = float("-inf")
    step: int = -1
    state: dict[str, torch.Tensor] | None = None

    def offer(self, val_accuracy: float, step: int, state: dict[str, torch.Tensor],
              write: bool) -> None:
        if val_accuracy <= self.val_accuracy:
            return
        self.val_accuracy, self.step, self.state = val_accuracy, step, state
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.summary() | {"state": self.state}, self.path)

    def summary(self) -> dict:
        return {"base_val_accuracy": self.base_val_accuracy,
                "selected_val_accuracy": self.val_accuracy, "selected_step": self.step}

    @classmethod
    def load(cls, path: Path) -> "Selection":
        saved = torch.load(path, weights_only=True)
        return cls(path, saved["base_val_accuracy"], saved["selected_val_accuracy"],
                   saved["selected_step"], saved["state"])


def _build_policy(cfg: TrainConfig, model) -> torch.nn.Module:
    if cfg.policy == "svf":
        return SVFPolicy(model, SVDCache(cfg.svd_cache),
                         SVFParam(cfg.parameterisation, cfg.max_mult), seed=cfg.seed,
                         residual=cfg.deepspeed_stage == 3)
    return LoraPolicy(model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)


def _optimizer(cfg: TrainConfig, params) -> tuple[torch.optim.Optimizer, object]:
    if cfg.optimizer == "adam-constant":
        opt = torch.optim.Adam(params, lr=cfg.lr)
        return opt, scheduler(opt, cfg.steps, "constant")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    return opt, scheduler(opt, cfg.steps, "cosine")


def label_distribution(engine: Engine, questions: list[str], labels: tuple[str, ...],
                       temperature: float) -> torch.Tensor:
    """(B, K): p(label | question) = softmax over the closed set of the labels' per-token
    log-probabilities / T (`label_scores`, the router's scores), under the engine's current
    weights; one-hot on the best label at T = 0."""
    scores = label_scores(engine, questions, list(labels))
    if temperature > 0:
        return torch.softmax(scores / temperature, -1)
    return torch.nn.functional.one_hot(scores.argmax(-1), len(labels)).to(scores.dtype)


def label_completions(tok, labels: tuple[str, ...], picks: list[int]) -> list[Completion]:
    return [Completion(labels[i], tok(labels[i], add_special_tokens=False)["input_ids"])
            for i in picks]


def sample_labels(engine: Engine, questions: list[str], labels: tuple[str, ...],
                  temperature: float, seed: int, per_question: int = 1) -> list[int]:
    """Rollouts on a closed answer set: `per_question` label indices per question (adjacent),
    each drawn from `label_distribution` (greedy at T = 0)."""
    probs = label_distribution(engine, questions, labels, temperature)
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, per_question, replacement=True, generator=g).flatten().tolist()


def label_accuracy(engine: Engine, task, split: str, n: int) -> float:
    """Share of items whose highest-scoring label is the answer (the router's decision rule)."""
    examples = task.examples(split, n)
    picks = sample_labels(engine, [e.prompt for e in examples], task.labels, 0.0, 0)
    return sum(task.labels[i] == e.answer for i, e in zip(picks, examples)) / len(examples)


def _verify(verifiers: dict[str, RewardCache], examples, texts) -> list[float]:
    """Rewards in batch order, each example judged by its own task's verifier."""
    out: list[float] = [0.0] * len(examples)
    for name, verify in verifiers.items():
        idx = [i for i, e in enumerate(examples) if e.task == name]
        if idx:
            for i, r in zip(idx, verify([examples[i] for i in idx], [texts[i] for i in idx])):
                out[i] = r
    return out


def sync_bytes(policy) -> int:
    """Bytes an engine needs per step to follow the policy (z or the LoRA weights, fp32)."""
    return trainable_fp32_bytes([p for p in policy.parameters() if p.requires_grad])


def full_copy_bytes(model: torch.nn.Module) -> int:
    """Bytes of a full weight copy (what the reference sends to its generator every step).
    ZeRO-3 leaves each rank a shard; `ds_numel` is the whole tensor's size."""
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())


def local_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of base weights this rank holds between forwards (its shard under ZeRO-3)."""
    return sum((p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()
               for p in model.parameters())


@dataclass
class RolloutSource:
    """Where rollouts come from: an engine, and how it runs the policy's current weights.

    An HF or vLLM engine follows the policy by z (or the LoRA weights) alone and rebuilds W'
    itself; the lock-step engine under ZeRO-3 is the policy's own forward and needs nothing."""

    engine: Engine
    following: Callable[[], object]  # a context manager: the engine runs the current policy
    close: Callable[[], None] = lambda: None


def _vllm_source(cfg: TrainConfig, policy) -> RolloutSource:
    """One vLLM engine actor for the whole run, shared by every rank. A LoRA travels with each
    request, so every rank adapts its own requests; z lives in the engine, so rank 0 sends it
    after each optimiser step (all ranks hold the same z). Every rank waits for the send before
    it asks for rollouts, and for every rank's rollouts before the next send or the end."""
    import hashlib

    import torch.distributed as dist

    from t2ray.distributed.ray_env import ensure_ray
    from t2ray.engines.vllm import VLLMConfig, VLLMEngine, start_engine_actor

    ensure_ray()
    rank, world = distributed()
    vcfg = VLLMConfig(model=cfg.model, svd_cache=cfg.svd_cache, seed=cfg.seed,
                      max_lora_rank=max(16, cfg.lora_rank), num_cpus=cfg.engine_cpus,
                      num_gpus=cfg.engine_gpus)
    name = "t2ray-vllm-" + hashlib.sha1(str(Path(cfg.out).resolve()).encode()).hexdigest()[:12]
    engine = VLLMEngine(vcfg, actor=start_engine_actor(vcfg, name=name))

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    # a LoRA is per request, so each rank adapts its own; z is sent by rank 0 alone
    adapts_here = cfg.policy == "lora" or rank == 0

    @contextmanager
    def following():
        with engine.adapted(policy.adapter()) if adapts_here else nullcontext():
            barrier()  # z is in the engine
            try:
                yield
            finally:
                barrier()  # every rank's rollouts are done

    def close() -> None:
        # every rank's last use of the engine ended at the last validation's closing barrier
        import ray

        if rank == 0:
            ray.kill(engine.actor)
        engine.close()

    return RolloutSource(engine, following, close)


def rollout_source(cfg: TrainConfig, model, tok, policy, ds_engine) -> RolloutSource:
    if cfg.engine == "vllm":
        return _vllm_source(cfg, policy)
    if cfg.deepspeed_stage == 3:
        # The weights are partitioned: generate through the policy's forward, ranks in step.
        return RolloutSource(LockstepEngine(ds_engine, tok, name=cfg.model), nullcontext)
    engine = HFEngine(model, tok, svd_cache=getattr(policy, "cache", None), name=cfg.model)
    return RolloutSource(engine, lambda: engine.adapted(policy.adapter()))


def build(cfg: TrainConfig) -> Trainable:
    """Every component of a run, from its config."""
    rank, world = distributed()
    torch.manual_seed(cfg.seed + rank)
    device = train_device(cfg.device)
    model, tok = load_model(cfg.model, device=str(device))
    policy = _build_policy(cfg, model).to(device)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt, sched = _optimizer(cfg, params)
    ds_engine = None
    if cfg.deepspeed_stage is not None:
        from t2ray.distributed.deepspeed import initialize

        ds_engine, opt = initialize(policy, opt, cfg.deepspeed_stage, cfg.grad_clip, world)
    rollouts = rollout_source(cfg, model, tok, policy, ds_engine)
    forward = ds_engine or policy
    tasks = [get_task(name) for name in cfg.task.split(",")]
    by_name = {t.name: t for t in tasks}
    train_examples = [e for t in tasks for e in t.examples("train")]
    max_new = max(max_new_tokens_for(t, rollouts.engine) for t in tasks)
    verifiers = {t.name: RewardCache(t.kind) for t in tasks}
    labels = tasks[0].labels  # all tasks of a run have one, or none do (validate)
    local_prompts = max(1, cfg.prompts_per_step // world)
    # rollouts per prompt: every label of the closed set, or the samples drawn
    per_prompt = len(labels) if cfg.label_rollouts == "all" else cfg.samples_per_prompt
    rl_cfg = ReinforceConfig(cfg.kl_coef, cfg.baseline, per_prompt, cfg.logprob_reduction,
                             cfg.kl_form)
    sizes = {"sync_bytes": sync_bytes(policy), "full_copy_bytes": full_copy_bytes(model),
             "local_weight_bytes": local_weight_bytes(model)}

    def batch(step: int) -> tuple[list, list[Prompt], list[list[int]]]:
        rng = random.Random(f"{cfg.seed}|{step}|{rank}")
        examples = rng.sample(train_examples, local_prompts)
        prompts = [Prompt(e.prompt, rng.choice(by_name[e.task].descriptions) if cfg.describe
                          else None) for e in examples]
        return examples, prompts, [prompt_ids(tok, p) for p in prompts]

    def rollout(step: int, examples, prompts) -> tuple[list[Completion], torch.Tensor | None]:
        """Completions, one row per rollout, and their weights when they enumerate a set."""
        seed = cfg.seed * 100_003 + step * 101 + rank
        questions = [e.prompt for e in examples]
        engine = rollouts.engine
        with rollouts.following():
            if labels and cfg.label_rollouts == "all":
                weights = label_distribution(engine, questions, labels, cfg.temperature)
                return label_completions(tok, labels, list(range(len(labels))) * len(examples)), \
                    weights.flatten()
            if labels:
                return label_completions(tok, labels, sample_labels(
                    engine, questions, labels, cfg.temperature, seed, per_prompt)), None
            return engine.generate([p for p in prompts for _ in range(per_prompt)],
                                   max_new_tokens=max_new, temperature=cfg.temperature,
                                   seed=seed), None

    def rl_step(step: int) -> tuple[torch.Tensor, dict]:
        examples, prompts, ids_of = batch(step)
        rows = [i for i in range(len(examples)) for _ in range(per_prompt)]
        completions, weights = rollout(step, examples, prompts)
        rewards = torch.tensor(_verify(verifiers, [examples[i] for i in rows],
                                       [c.text for c in completions]))
        ids, attn, comp = completion_batch(
            [ids_of[i] for i in rows],
            [c.token_ids + [tok.eos_token_id] for c in completions], tok.pad_token_id, device)
        base = policy.base_logits(ids, attn) if cfg.kl_coef > 0 else None
        loss, stats = reinforce_loss(forward(ids, attn), ids, comp, rewards, rl_cfg,
                                     base_logits=base, weights=weights)
        return loss, {**stats, **sizes, "tokens": int(attn.sum())}

    def sft_step(step: int) -> tuple[torch.Tensor, dict]:
        examples, _, ids_of = batch(step)
        answers = [tok(e.solution + tok.eos_token, add_special_tokens=False)["input_ids"]
                   for e in examples]
        ids, attn, comp = completion_batch(ids_of, answers, tok.pad_token_id, device)
        loss = sft_loss(forward(ids, attn), ids, comp)
        return loss, {"loss": loss.item(), "completion_tokens": int(comp.sum()), **sizes,
                      "tokens": int(attn.sum())}

    def val_accuracy() -> float:
        engine = rollouts.engine
        with rollouts.following():
            accs = [label_accuracy(engine, t, "validation", cfg.eval_n) if labels else
                    evaluate_task(engine, t, "validation", cfg.eval_n,
                                  t.descriptions[0] if cfg.describe else None).accuracy
                    for t in tasks]
        return sum(accs) / len(accs)

    selection_path = Path(cfg.out) / "selection.pt"
    if resuming() and selection_path.exists():
        selection = Selection.load(selection_path)
    else:  # candidate 0: the identity, scored on the same validation items
        trained = trainable_copy(policy)
        identity = trained | policy.identity_state()
        load_trainable(policy, identity)
        selection = Selection(selection_path, base_val_accuracy=val_accuracy())
        selection.offer(selection.base_val_accuracy, 0, identity, write=rank == 0)
        load_trainable(policy, trained)

    def validate() -> dict:
        acc = val_accuracy()
        # copied on every rank at every validation: under ZeRO-3 reading z is collective
        selection.offer(acc, sched.last_epoch, trainable_copy(policy), write=rank == 0)
        return {"val_accuracy": acc, "best_val_accuracy": selection.val_accuracy,
                "best_step": selection.step}

    def save(history: list[dict]) -> None:
        """Ship the best validation candidate (the identity when no step beat the base)."""
        out = Path(cfg.out)
        save_history(history, out, "reward_curve.png",
                     "reward_mean" if cfg.objective == "rl" else "loss",
                     f"{cfg.policy}-{cfg.objective} on {cfg.task}")
        final = {k: v for k, v in history[-1].items() if k in ("reward_mean", "step")}
        policy.save(out, cfg.task, {**final, "val_accuracy": selection.val_accuracy,
                                    **selection.summary()}, cfg.model, state=selection.state)

    step_fn = rl_step if cfg.objective == "rl" else sft_step
    return Trainable(policy, opt, sched, step_fn, validate, ds_engine, save, rollouts.close)


def train_loop(config: dict) -> dict:
    """One worker's training run (in-process or under Ray Train)."""
    cfg = TrainConfig(**config)
    history = run_recipe(cfg, build, desc=f"{cfg.policy}-{cfg.objective}")
    return {"history": history, "sync_bytes": history[-1]["sync_bytes"],
            "full_copy_bytes": history[-1]["full_copy_bytes"]}
