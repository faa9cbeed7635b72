"""The Text-to-LoRA hypernetwork: task description embedding -> LoRA A, B for every (layer, module).

    task  = LayerNorm(Linear(e))                          e: description embedding (E)
    layer = LayerNorm(Embedding(layer index))             d/4
    kind  = LayerNorm(Embedding(module type))             d/4
    h     = [task, layer, kind]                           d = latent (128)
    h     = mixer(h); h = h + block1(h); h = h + block2(h); h = block3(h)  -> head input (512)

Heads (one set of rows per target module):
- L: Linear(H -> r*(in+out)) emits A and B together;
- M: one Linear(H -> r*max(in,out)) per module shared by A and B; a learned A/B embedding is
  added before block2, and A / B keep the first `in` / `out` columns;
- S: like M but the head emits one rank row (max(in,out)); a learned rank-position embedding
  (through block2) makes the r rows.
- Z (text-to-SVF): the head emits an SVF expert vector z (min(in,out) values, one per singular
  value) for each target matrix instead of a LoRA: a far smaller output.

Shapes, layer count and module names come from the base model's config alone
(`target_layers`: the architecture built on the meta device, the way SVF finds its matrices),
never from its weights. One forward produces the LoRA for every (layer, module) of a batch of
descriptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from t2ray.svf.targets import TargetMatrix, config_targets, resolve_targets

VARIANTS = ("L", "M", "S", "Z")


def by_type(names: Iterable[str]) -> dict[str, list[str]]:
    """Full module names grouped by module type (the last name component), in model order, which
    is layer order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return groups


def target_layers(config, targets: list[str]) -> dict[str, list[TargetMatrix]]:
    """{module type: its matrix in every layer} from a transformers config (or its dict), in the
    order of `targets`. The hypernetwork has one head per type and one embedding per layer, so
    each type must occur the same number of times (once per layer) and with one shape."""
    found = {m.name: m for m in config_targets(config, targets)}
    layers = {t: [found[n] for n in names] for t, names in by_type(found).items()}
    counts = {t: len(ms) for t, ms in layers.items()}
    shapes = {t: sorted({(m.out_features, m.in_features) for m in ms}) for t, ms in layers.items()}
    if len(set(counts.values())) > 1 or any(len(s) > 1 for s in shapes.values()):
        raise ValueError(f"T2L needs each target once per layer with one shape; found {counts} "
                         f"modules of (out, in) shapes {shapes}")
    return {t: layers[t] for t in resolve_targets(targets)}


def lora_targets(config, targets: list[str]) -> tuple[int, dict[str, tuple[int, int]]]:
    """(number of layers, {module type: (in, out)}) from a transformers config (or its dict)."""
    layers = target_layers(config, targets)
    return len(next(iter(layers.values()))), {t: (ms[0].in_features, ms[0].out_features)
                                              for t, ms in layers.items()}


@dataclass
class HyperConfig:
    variant: str
    n_layers: int
    modules: dict[str, tuple[int, int]]  # module type -> (in, out)
    rank: int = 8
    encoder_dim: int = 1024
    latent: int = 128
    head_in: int = 512
    dropout: float = 0.05
    head_bias: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.latent % 4:
            raise ValueError("latent must be divisible by 4")
        self.modules = {k: tuple(v) for k, v in self.modules.items()}

    def as_dict(self) -> dict:
        return asdict(self)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(d_in)] if norm else [nn.Dropout(dropout)]
    layers += [nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Dropout(dropout),
               nn.Linear(d_hidden, d_out), nn.SiLU()]
    return nn.Sequential(*layers)


class HyperLoRA(nn.Module):
    def __init__(self, cfg: HyperConfig):
        super().__init__()
        self.cfg = cfg
        d, r, p = cfg.latent, cfg.rank, cfg.dropout
        self.module_names = list(cfg.modules)
        self.task_proj = nn.Sequential(nn.Linear(cfg.encoder_dim, d // 2), nn.LayerNorm(d // 2))
        self.layer_emb = nn.Sequential(nn.Embedding(cfg.n_layers, d // 4), nn.LayerNorm(d // 4))
        self.module_emb = nn.Sequential(nn.Embedding(len(cfg.modules), d // 4),
                                        nn.LayerNorm(d // 4))
        self.mixer = nn.Sequential(_mlp(d, 4 * d, d, p, norm=False), nn.Dropout(p))
        self.block1 = nn.Sequential(_mlp(d, 4 * d, d, p, norm=True), nn.Dropout(p))
        self.block2 = nn.Sequential(_mlp(d, 4 * d, d, p, norm=True), nn.Dropout(p))
        self.block3 = _mlp(d, 4 * d, cfg.head_in, p, norm=True)
        heads = {}
        for name, (fan_in, fan_out) in cfg.modules.items():
            width = {"L": r * (fan_in + fan_out), "M": r * max(fan_in, fan_out),
                     "S": max(fan_in, fan_out), "Z": min(fan_in, fan_out)}[cfg.variant]
            heads[name] = nn.Linear(cfg.head_in, width, bias=cfg.head_bias)
        self.heads = nn.ModuleDict(heads)
        if cfg.variant in ("M", "S"):
            self.ab_emb = nn.Parameter(torch.randn(len(cfg.modules), 2, d))
            self.ab_norm = nn.LayerNorm(d)
        if cfg.variant == "S":
            self.rank_emb = nn.Sequential(nn.Embedding(r, d), nn.LayerNorm(d))

    def _trunk_to_block1(self, task_emb: torch.Tensor, module_idx: int) -> torch.Tensor:
        """(B, N, d): the latent of every layer for one module type, after block1."""
        b, n, d = task_emb.shape[0], self.cfg.n_layers, self.cfg.latent
        task = self.task_proj(task_emb)[:, None].expand(b, n, d // 2)
        layer = self.layer_emb(torch.arange(n, device=task_emb.device))[None].expand(b, n, d // 4)
        kind = self.module_emb(torch.tensor([module_idx], device=task_emb.device))
        h = torch.cat([task, layer, kind.expand(b, n, d // 4)], dim=-1)
        h = self.mixer(h)
        return h + self.block1(h)

    def forward(self, task_emb: torch.Tensor) -> dict:
        """task_emb (B, E) -> {module type: (A (B, N, r, in), B (B, N, out, r))}, or for Z
        {module type: z (B, N, min(in, out))}."""
        if task_emb.ndim != 2 or task_emb.shape[1] != self.cfg.encoder_dim:
            raise ValueError(f"expected (batch, {self.cfg.encoder_dim}) embeddings, "
                             f"got {tuple(task_emb.shape)}")
        out = {}
        r = self.cfg.rank
        for m, name in enumerate(self.module_names):
            fan_in, fan_out = self.cfg.modules[name]
            h1 = self._trunk_to_block1(task_emb, m)
            head = self.heads[name]
            if self.cfg.variant == "Z":
                out[name] = head(self.block3(h1 + self.block2(h1)))
                continue
            if self.cfg.variant == "L":
                flat = head(self.block3(h1 + self.block2(h1)))
                a = flat[..., : r * fan_in].unflatten(-1, (r, fan_in))
                b_t = flat[..., r * fan_in :].unflatten(-1, (r, fan_out))
            else:
                rows = []
                for ab in range(2):
                    x = h1 + self.ab_norm(self.ab_emb[m, ab])
                    h2 = x + self.block2(x)
                    if self.cfg.variant == "M":
                        rows.append(head(self.block3(h2)).unflatten(-1, (r, -1)))
                    else:  # S: one rank row per position
                        pos = self.rank_emb(torch.arange(r, device=x.device))
                        pos = pos + self.block2(pos)
                        rows.append(head(self.block3(h2[..., None, :] + pos)))
                a, b_t = rows[0][..., :fan_in], rows[1][..., :fan_out]
            out[name] = (a, b_t.transpose(-1, -2))
        return out


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
