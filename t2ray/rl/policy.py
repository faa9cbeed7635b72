"""Trainable policies over a frozen base model: SVF expert vectors or LoRA weights.

Only z (or A, B) are parameters; the base weights keep requires_grad=False. W' is built inside
autograd (one graph) and substituted with `torch.func.functional_call`, so the base weights are
never overwritten and `base_logits` is the same model without substitution. Under ZeRO-3 the
base weights are DeepSpeed's partitioned parameters and must not be swapped out, so the SVF policy
instead adds U diag(sigma' - sigma) V^T x to each target layer's own output (`residual=True`):
the same W'x, at the price of two extra thin matmuls per layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.func import functional_call

from t2ray.distributed.loop import trainable_state
from t2ray.lora.peft_io import export_peft
from t2ray.lora.weights import LoraWeights, batched_lora, init_lora
from t2ray.models import weights_fingerprint
from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertVector, SVFParam, compose_weight


def _freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _param_key(name: str) -> str:
    return name.replace(".", "__")


@contextmanager
def _whole(params: list[torch.nn.Parameter], modify: bool) -> Iterator[None]:
    """ZeRO-3 partitions parameters (until a forward gathers them): read or write them whole.
    Collective under ZeRO-3: every rank must call it; a no-op otherwise."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


def _trainable(policy: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in policy.parameters() if p.requires_grad]


def trainable_copy(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a policy's trainable tensors: one candidate a run may ship."""
    with _whole(_trainable(policy), modify=False):
        return {n: t.detach().cpu().clone() for n, t in trainable_state(policy).items()}


def load_trainable(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Write a candidate (from `trainable_copy` or `identity_state`) into the policy."""
    params = dict(policy.named_parameters())
    with _whole(_trainable(policy), modify=True), torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


class SVFPolicy(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, cache: SVDCache, param: SVFParam,
                 seed: int = 0, init: ExpertVector | None = None, residual: bool = False):
        super().__init__()
        cache.check_model(model)
        _freeze(model)
        self.model, self.cache, self.param, self.residual = model, cache, param, residual
        self.names = sorted(cache.matrices)
        g = torch.Generator().manual_seed(seed)
        self.z = torch.nn.ParameterDict({
            _param_key(n): torch.nn.Parameter(
                init.z[n].clone().float() if init is not None else param.init(r, g))
            for n, r in ((n, cache.matrices[n].rank) for n in self.names)})
        # SVD factors are buffers: cast them explicitly with the model (DeepSpeed bf16 casts
        # parameters, not buffers).
        for n in self.names:
            u, s, vh = cache.factors(n)
            self.register_buffer(f"u_{_param_key(n)}", u, persistent=False)
            self.register_buffer(f"s_{_param_key(n)}", s, persistent=False)
            self.register_buffer(f"vh_{_param_key(n)}", vh, persistent=False)

    def identity_state(self) -> dict[str, torch.Tensor]:
        """The expert that gives back the base weights exactly (candidate 0 of a run)."""
        return {f"z.{_param_key(n)}": self.param.identity(self.cache.matrices[n].rank)
                for n in self.names}

    def adapted_weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            k = _param_key(n)
            w = compose_weight(getattr(self, f"u_{k}").float(), getattr(self, f"s_{k}").float(),
                               getattr(self, f"vh_{k}").float(), self.z[k], self.param)
            base_w = self.model.get_submodule(n).weight
            out[f"{n}.weight"] = (w.T if self.cache.matrices[n].transposed else w).to(base_w.dtype)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Logits with the adapted weights (differentiable in z)."""
        if not self.residual:
            return functional_call(self.model, self.adapted_weights(), args=(),
                                   kwargs={"input_ids": input_ids,
                                           "attention_mask": attention_mask},
                                   strict=False).logits
        handles = [self.model.get_submodule(n).register_forward_hook(self._add_residual(n))
                   for n in self.names]
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            for handle in handles:
                handle.remove()

    def _add_residual(self, name: str):
        k = _param_key(name)
        u, s, vh = (getattr(self, f"{p}_{k}") for p in ("u", "s", "vh"))

        def hook(module, args, output):
            x = args[0]
            delta = self.param.scales(self.z[k], s.float()) - s.float()
            return output + ((x @ vh.T.to(x.dtype)) * delta.to(x.dtype)) @ u.T.to(x.dtype)

        return hook

    @torch.no_grad()
    def base_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def expert(self, task: str | None = None, metrics: dict | None = None,
               state: dict[str, torch.Tensor] | None = None) -> ExpertVector:
        """The current z, or a candidate's (`state`, from `trainable_copy`)."""
        z = {n: (state[f"z.{_param_key(n)}"] if state is not None else self.z[_param_key(n)])
             .detach().float().cpu().clone() for n in self.names}
        e = ExpertVector.for_cache(self.cache, z, self.param, task=task)
        e.metrics = metrics or {}
        return e

    def adapter(self) -> ExpertVector:
        """What an engine needs to follow this policy: z only."""
        return self.expert()

    def save(self, out: Path, task: str, metrics: dict, base_model: str,
             state: dict[str, torch.Tensor] | None = None) -> Path:
        return self.expert(task=task, metrics=metrics, state=state).save(out / "expert")


class LoraPolicy(torch.nn.Module):
    """The LoRA baseline (q, v projections, rank 16, alpha 32 in the paper) with the same loop."""

    def __init__(self, model: torch.nn.Module, rank: int = 16, alpha: float = 32.0,
                 targets=("q_proj", "v_proj"), use_rslora: bool = False, seed: int = 0):
        super().__init__()
        _freeze(model)
        self.model = model
        lw = init_lora(model, rank, alpha, targets, use_rslora,
                       generator=torch.Generator().manual_seed(seed))
        self.rank, self.alpha, self.use_rslora, self.targets = rank, alpha, use_rslora, targets
        self.names = sorted(lw.a)
        self.a = torch.nn.ParameterDict({_param_key(n): torch.nn.Parameter(lw.a[n])
                                         for n in self.names})
        self.b = torch.nn.ParameterDict({_param_key(n): torch.nn.Parameter(lw.b[n])
                                         for n in self.names})

    def identity_state(self) -> dict[str, torch.Tensor]:
        """The zero adapter (B = 0): the base model exactly (candidate 0 of a run)."""
        return {f"b.{_param_key(n)}": torch.zeros_like(self.b[_param_key(n)].detach().cpu())
                for n in self.names}

    def lora(self, state: dict[str, torch.Tensor] | None = None) -> LoraWeights:
        """The current A and B, or a candidate's (`state`, from `trainable_copy`)."""
        a, b = ({n: state[f"{ab}.{_param_key(n)}"] for n in self.names} if state is not None
                else {n: getattr(self, ab)[_param_key(n)] for n in self.names}
                for ab in ("a", "b"))
        return LoraWeights(a, b, self.rank, self.alpha, self.use_rslora, tuple(self.targets))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        with batched_lora(self.model, [self.lora()] * input_ids.shape[0]):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.no_grad()
    def base_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def adapter(self) -> LoraWeights:
        return self.lora()

    def save(self, out: Path, task: str, metrics: dict, base_model: str,
             state: dict[str, torch.Tensor] | None = None) -> Path:
        """The LoRA (or a candidate's, `state`) as a PEFT adapter directory (`<out>/lora`)."""
        return export_peft(self.lora(state), out / "lora", base_model=base_model,
                           base_fingerprint=weights_fingerprint(self.model))
