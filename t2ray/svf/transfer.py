"""Move experts between models whose target matrices have the same shapes.

Matrices are matched by layer and module (the part of the name after the model prefix); z's
components follow singular values in descending order on both sides, so component i scales the
i-th largest singular direction of the new model too (the paper moves Llama3-8B experts to
Mistral-7B this way). `shuffle=True` permutes the components instead (the paper's ablation).
"""

from __future__ import annotations

import re

import torch

from t2ray.svf.cache import SVDCache
from t2ray.svf.expert import ExpertVector


def _layer_module(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `3.mlp.up_proj` (architecture prefixes differ)."""
    m = re.search(r"(\d+\..*)$", name)
    return m.group(1) if m else name


def transfer(expert: ExpertVector, target: SVDCache, shuffle: bool = False,
             seed: int = 0) -> ExpertVector:
    """The same expert expressed on the matrices of the target model's SVD cache."""
    if not expert.shapes:
        raise ValueError("the expert records no matrix shapes; re-save it with this t2ray version")
    target_shapes = {n: (m.out_features, m.in_features) for n, m in target.matrices.items()}
    by_key = {_layer_module(n): n for n in target_shapes}
    z_new: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    for name, z in expert.z.items():
        key = _layer_module(name)
        if key not in by_key:
            raise ValueError(f"target model has no matrix for {name} (looked for *{key})")
        to = by_key[key]
        if target_shapes[to] != tuple(expert.shapes[name]):
            raise ValueError(f"cannot transfer {name}: shape {tuple(expert.shapes[name])} on the "
                             f"source model, {target_shapes[to]} for {to} on the target")
        z_new[to] = z[torch.randperm(z.numel(), generator=gen)] if shuffle else z.clone()
    missing = set(target_shapes) - set(z_new)
    if missing:
        raise ValueError(f"expert covers no z for {len(missing)} target matrices, "
                         f"e.g. {sorted(missing)[0]}")
    moved = ExpertVector.for_cache(target, z_new, expert.param, task=expert.task)
    moved.metrics = {**expert.metrics, "transferred_from": expert.base_fingerprint,
                     "shuffled": shuffle}
    return moved
