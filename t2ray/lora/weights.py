"""LoRA weights (A, B per target module) and their functional application.

`batched_lora` applies a *different* LoRA to each row of a batch: the rows' A and B are stacked
and the low-rank update is one batched matmul, y_b = x_b W^T + scale * (x_b A_b^T) B_b^T.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch


def lora_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """alpha / sqrt(r) with rsLoRA, alpha / r without (PEFT's convention)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


@dataclass
class LoraWeights:
    """A (r, in) and B (out, r) for each target module, keyed by full module name."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    rank: int
    alpha: float
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if set(self.a) != set(self.b):
            raise ValueError("LoRA A and B must cover the same modules")
        for name in self.a:
            r_a, r_b = self.a[name].shape[0], self.b[name].shape[1]
            if r_a != self.rank or r_b != self.rank:
                raise ValueError(f"{name}: A has rank {r_a}, B has rank {r_b}, "
                                 f"expected {self.rank}")

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha, self.use_rslora)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in (*self.a.values(), *self.b.values()))

    def delta(self, name: str) -> torch.Tensor:
        """scale * B @ A: the (out, in) update of one module."""
        return self.scale * (self.b[name] @ self.a[name])


class _LoraLinear(torch.nn.Module):
    """A linear layer plus a per-row low-rank update (row_a: (B, r, in), row_b: (B, out, r))."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base
        self.row_a: torch.Tensor | None = None
        self.row_b: torch.Tensor | None = None
        self.scale = 1.0
        self.dropout = 0.0  # on the update's input only, as PEFT's lora_dropout (training)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.row_a is None:
            return y
        if self.row_a.shape[0] != x.shape[0]:
            raise ValueError(f"{self.row_a.shape[0]} row LoRAs for a batch of {x.shape[0]}")
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])
        if self.dropout:
            x3 = torch.nn.functional.dropout(x3, self.dropout, training=True)
        update = torch.bmm(torch.bmm(x3, self.row_a.transpose(1, 2).to(x.dtype)),
                           self.row_b.transpose(1, 2).to(x.dtype))
        return y + self.scale * update.reshape(*shape[:-1], -1)


@contextmanager
def batched_lora(model: torch.nn.Module, row_loras: Sequence[LoraWeights | None],
                 dropout: float = 0.0) -> Iterator:
    """Run a batch whose row i uses `row_loras[i]` (None: no update). Gradients flow into A, B.
    `dropout` drops the update's input (PEFT's lora_dropout; for training only).

    All LoRAs of one batch must share rank, scale and modules (one batched matmul per layer).
    """
    present = [lw for lw in row_loras if lw is not None]
    if not present:
        yield model
        return
    ref = present[0]
    for lw in present[1:]:
        if (lw.rank, lw.scale, set(lw.a)) != (ref.rank, ref.scale, set(ref.a)):
            raise ValueError("LoRAs of one batch must share rank, scale and target modules")
    wrapped: dict[str, _LoraLinear] = {}
    try:
        for name in ref.a:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            wrapper = _LoraLinear(getattr(parent, child))
            base_w = wrapper.base.weight
            zeros_a = torch.zeros(ref.rank, base_w.shape[1], device=base_w.device)
            zeros_b = torch.zeros(base_w.shape[0], ref.rank, device=base_w.device)
            wrapper.row_a = torch.stack([zeros_a if lw is None else lw.a[name]
                                         for lw in row_loras])
            wrapper.row_b = torch.stack([zeros_b if lw is None else lw.b[name]
                                         for lw in row_loras])
            wrapper.scale = ref.scale
            wrapper.dropout = dropout
            setattr(parent, child, wrapper)
            wrapped[name] = wrapper
        yield model
    finally:
        for name, wrapper in wrapped.items():
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, wrapper.base)


def init_lora(model: torch.nn.Module, rank: int, alpha: float, targets=("q_proj", "v_proj"),
              use_rslora: bool = False, generator: torch.Generator | None = None) -> LoraWeights:
    """PEFT's default init: A ~ kaiming-uniform(a=sqrt(5)), B = 0 (so the delta starts at 0)."""
    a, b = {}, {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "weight"):
            out_f, in_f = module.weight.shape
            bound = 1 / math.sqrt(in_f)  # kaiming_uniform with a=sqrt(5)
            a[name] = (torch.rand(rank, in_f, generator=generator) * 2 - 1) * bound
            b[name] = torch.zeros(out_f, rank)
    if not a:
        raise ValueError(f"no module matches the LoRA targets {targets}")
    return LoraWeights(a, b, rank, alpha, use_rslora, tuple(targets))
