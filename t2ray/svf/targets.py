"""Which weight matrices SVF adapts, and how many parameters that costs (from a config alone)."""

from __future__ import annotations

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


def weight_of(module: torch.nn.Module, transposed: bool) -> torch.Tensor:
    """W as (out, in), a view of the module's parameter."""
    return module.weight.T if transposed else module.weight


def find_targets(model: torch.nn.Module, targets) -> list[TargetMatrix]:
    """All modules whose last name component is a target, with their (out, in) shapes.

    Works for nn.Linear and for transformers' Conv1D (weight stored transposed). Fused modules
    (e.g. `qkv_proj`, `gate_up_proj`) are adapted as one matrix when named explicitly.
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
    if not found:
        raise ValueError(f"no module of the model matches the SVF targets {sorted(wanted)}")
    return found


def _module_shapes(config) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection of a Llama/Mistral/Qwen-style decoder layer."""
    h = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    inter = config.intermediate_size
    return {"q_proj": (heads * head_dim, h), "k_proj": (kv * head_dim, h),
            "v_proj": (kv * head_dim, h), "o_proj": (h, heads * head_dim),
            "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}


def count_svf_params(config, targets) -> int:
    """Expert-vector length summed over layers: sum of min(out, in) per target matrix."""
    shapes = _module_shapes(config)
    names = resolve_targets(targets)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"cannot count {unknown} from a config; known: {sorted(shapes)}")
    return config.num_hidden_layers * sum(min(shapes[n]) for n in names)


def count_lora_params(config, rank: int, targets=("q_proj", "v_proj")) -> int:
    """LoRA parameters: rank * (in + out) per target matrix and layer."""
    shapes = _module_shapes(config)
    return config.num_hidden_layers * sum(rank * sum(shapes[n]) for n in resolve_targets(targets))
