"""Which weight matrices SVF adapts, and how many parameters that costs (from a config alone)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

MLP = ("gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "v_proj")
PRESETS: dict[str, tuple[str, ...]] = {"mlp": MLP, "attn": ATTN, "all": MLP + ATTN}


def resolve_targets(targets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A preset name (`mlp`, `attn`, `all`), a comma-separated string, or a list of module names."""
    if isinstance(targets, str):
        if targets in PRESETS:
            return PRESETS[targets]
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    names = tuple(targets)
    if not names:
        raise ValueError("no SVF targets given; use mlp, attn, all or module names")
    return names


@dataclass(frozen=True)
class TargetMatrix:
    """One adapted matrix. `transposed` marks modules that store W as (in, out) (GPT-2 Conv1D)."""

    name: str  # full module name, e.g. model.layers.3.mlp.up_proj
    out_features: int
    in_features: int
    transposed: bool = False

    @property
    def rank(self) -> int:
        return min(self.out_features, self.in_features)


def layer_index(name: str) -> int | None:
    """The decoder layer a module sits in (`...layers.12.mlp...` -> 12), None outside them."""
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def weight_of(module: torch.nn.Module, transposed: bool) -> torch.Tensor:
    """W as (out, in), a view of the module's parameter."""
    return module.weight.T if transposed else module.weight


def find_targets(model: torch.nn.Module, targets) -> list[TargetMatrix]:
    """All modules whose last name component is a target, with their (out, in) shapes.

    Works for nn.Linear and for transformers' Conv1D (weight stored transposed). Fused modules
    (e.g. `qkv_proj`, `gate_up_proj`) are adapted as one matrix when named explicitly. A target
    that names no module of the model is an error, never silently skipped.
    """
    wanted = set(resolve_targets(targets))
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in wanted:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise TypeError(f"SVF target {name} has no 2-D weight ({type(module).__name__})")
        transposed = type(module).__name__ == "Conv1D"
        out_f, in_f = weight.shape[::-1] if transposed else weight.shape
        found.append(TargetMatrix(name, out_f, in_f, transposed))
    missing = wanted - {m.name.rsplit(".", 1)[-1] for m in found}
    if missing:
        raise ValueError(f"no module of the model ({type(model).__name__}) matches the targets "
                         f"{sorted(missing)}")
    return found


def model_config(config):
    """A transformers config from itself or its dict (a config.json, which names its model_type)."""
    from transformers import AutoConfig

    if not isinstance(config, dict):
        return config
    if "model_type" not in config:
        raise ValueError("the model config names no model_type; pass the model's config.json")
    try:
        return AutoConfig.for_model(**config)
    except ValueError:
        raise ValueError(f"model_type {config['model_type']!r} is unknown to transformers") from None


def meta_model(config) -> torch.nn.Module:
    """The causal LM a config describes, built on the meta device: shapes without weights."""
    from transformers import AutoModelForCausalLM

    config = model_config(config)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as err:  # transformers' error for a config with no causal-LM class
        raise ValueError(f"model_type {config.model_type!r} is not a causal language model: "
                         f"{str(err).splitlines()[0]}") from None


def config_targets(config, targets) -> list[TargetMatrix]:
    """`find_targets` on the model a config describes, built on the meta device (no weights are
    allocated), so names and shapes come from the architecture itself."""
    return find_targets(meta_model(config), targets)


def count_svf_params(config, targets) -> int:
    """Expert-vector length summed over the model: sum of min(out, in) per target matrix."""
    return sum(m.rank for m in config_targets(config, targets))


def count_lora_params(config, rank: int, targets=("q_proj", "v_proj")) -> int:
    """LoRA parameters: rank * (in + out) per target matrix."""
    return sum(rank * (m.out_features + m.in_features) for m in config_targets(config, targets))
