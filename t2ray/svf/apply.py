"""Two exact ways to run a model with SVF experts.

- `recomposed`: write W' = U diag(sigma') V^T into the weights once per expert or mixture and
  restore the base weights bit-exactly afterwards. Zero per-token overhead; best when a batch
  shares one expert.
- `factorized`: y = ((x V) * sigma'_row) U^T with a per-row sigma', so every request of a batch
  carries its own expert or mixture and no weight is rebuilt (our multi-tenant path).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertVector, check_ranks, compose_weight
from t2ray.svf.targets import weight_of


def _check(cache: SVDCache, expert: ExpertVector) -> None:
    if expert.base_fingerprint and expert.base_fingerprint != cache.fingerprint:
        raise ValueError(f"expert {expert.task!r} belongs to base {expert.base_fingerprint}, "
                         f"the SVD cache to {cache.fingerprint}")
    check_ranks(expert.ranks(), cache.ranks(), what=f"expert {expert.task!r}")


def compose_weights(cache: SVDCache, expert: ExpertVector,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """W' of every target of `expert`, in `dtype`: what `apply_expert` writes, computed once to
    be written many times (an engine keeping its hot experts)."""
    _check(cache, expert)
    with torch.no_grad():
        return {name: compose_weight(*cache.factors(name), z.float(), expert.param).to(dtype)
                for name, z in expert.z.items()}


def apply_expert(model: torch.nn.Module, cache: SVDCache, expert: ExpertVector,
                 weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Write W' into every target matrix (`weights` from `compose_weights` when given, else
    composed matrix by matrix); returns the base weights for `restore_weights`."""
    _check(cache, expert)
    modules = dict(model.named_modules())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, z in expert.z.items():
                module, meta = modules[name], cache.matrices[name]
                saved[name] = module.weight.detach().clone()
                w_new = (weights[name] if weights is not None else
                         compose_weight(*cache.factors(name), z.float(), expert.param))
                weight_of(module, meta.transposed).copy_(w_new.to(module.weight.dtype))
    except BaseException:
        restore_weights(model, saved)
        raise
    return saved


def restore_weights(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put the saved base weights back, bit-exactly."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in saved.items():
            modules[name].weight.copy_(w)


@contextmanager
def recomposed(model: torch.nn.Module, cache: SVDCache, expert: ExpertVector) -> Iterator:
    """Run the model with W' in place of W for every target; base weights restored on exit."""
    saved = apply_expert(model, cache, expert)
    try:
        yield model
    finally:
        restore_weights(model, saved)


class FactorizedLinear(torch.nn.Module):
    """A target linear layer computed through its SVD with per-row singular values.

    `row_scales` (batch, r) holds sigma' for each row of the current batch; None means the base
    layer itself (no SVD round trip).
    """

    def __init__(self, base: torch.nn.Module, u: torch.Tensor, s: torch.Tensor,
                 vh: torch.Tensor):
        super().__init__()
        self.base = base
        dtype, device = base.weight.dtype, base.weight.device
        self.register_buffer("u", u.to(device, dtype), persistent=False)
        self.register_buffer("sigma", s.to(device), persistent=False)
        self.register_buffer("vh", vh.to(device, dtype), persistent=False)
        self.row_scales: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:  # so code that inspects `.weight` keeps working
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.row_scales is None:
            return self.base(x)
        scales = self.row_scales.to(x.dtype)
        if scales.shape[0] != x.shape[0]:
            raise ValueError(f"{scales.shape[0]} row experts for a batch of {x.shape[0]}")
        scales = scales.view(scales.shape[0], *([1] * (x.ndim - 2)), scales.shape[-1])
        y = ((x @ self.vh.T) * scales) @ self.u.T
        bias = getattr(self.base, "bias", None)
        return y + bias if bias is not None else y


def install_factorized(model: torch.nn.Module, cache: SVDCache) -> dict[str, FactorizedLinear]:
    """Wrap every cached target matrix in a FactorizedLinear (idempotent)."""
    wrappers = {}
    for name in cache.matrices:  # factors are of W as (out, in), so Conv1D works the same
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, child)
        if not isinstance(module, FactorizedLinear):
            module = FactorizedLinear(module, *cache.factors(name))
            setattr(parent, child, module)
        wrappers[name] = module
    return wrappers


def uninstall_factorized(model: torch.nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, FactorizedLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.base)


@contextmanager
def factorized(model: torch.nn.Module, cache: SVDCache,
               row_experts: Sequence[ExpertVector | None]) -> Iterator:
    """Run a batch whose row i uses `row_experts[i]` (None: the base weights through the SVD)."""
    for e in row_experts:
        if e is not None:
            _check(cache, e)
    wrappers = install_factorized(model, cache)
    try:
        for name, wrapper in wrappers.items():
            rows = [wrapper.sigma if e is None else e.param.scales(e.z[name].float(), wrapper.sigma)
                    for e in row_experts]
            wrapper.row_scales = torch.stack(rows)
        yield model
    finally:
        for wrapper in wrappers.values():
            wrapper.row_scales = None
