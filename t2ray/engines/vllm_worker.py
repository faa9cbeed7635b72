"""SVF inside vLLM's workers: z arrives, W' = U diag(sigma') V^T is built from factors the
worker already holds and handed to vLLM's own weight loader. Only z crosses processes.

vLLM injects `SVFWorker`'s methods into every worker process (`worker_extension_cls`) and calls
them through `collective_rpc`, whose arguments may be lists, dicts and bytes but no tensors:
z travels as float32 bytes. Each tensor-parallel rank keeps only the factor slices its shard of
the weights needs and computes only its rows (column-parallel q/k/v/gate/up) or columns
(row-parallel o/down) of W'; the full-shape tensor it hands to `reload_weights` holds its own
slice at its offset, the loader takes exactly that slice.

vLLM fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, and a fused layer handed
only some of its parts stays wrong for good (measured on vLLM 0.32 CPU: only rebuilding the
engine fixed it). So every update is checked here before vLLM sees it: known matrices only, z
lengths equal to the ranks, and for each fused layer touched, every part the SVD cache covers;
parts the cache does not cover (k_proj beside SVF's q and v) are sent unchanged from the base.

Kept import-light: vLLM imports this module in each worker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import safe_open

FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
ROW_PARALLEL = ("o_proj", "down_proj")  # the input dimension is sharded; all others: the output


def group_of(name: str) -> str:
    """The vLLM module a matrix loads into: `...mlp.gate_proj` -> `...mlp.gate_up_proj`."""
    prefix, _, module = name.rpartition(".")
    return f"{prefix}.{FUSED.get(module, module)}"


def check_update(names, ranks: dict[str, int], lengths: dict[str, int]) -> None:
    """Refuse an update vLLM must never see: unknown matrices, z of the wrong length, or a
    fused layer with some of the cached parts it needs missing."""
    unknown = sorted(set(names) - set(ranks))
    if unknown:
        raise ValueError(f"no SVF matrix {unknown[:3]} in this engine's SVD cache")
    wrong = {n: (lengths[n], ranks[n]) for n in names if lengths[n] != ranks[n]}
    if wrong:
        raise ValueError(f"z lengths (given, rank) do not fit: {dict(list(wrong.items())[:3])}")
    for group in {group_of(n) for n in names}:
        needed = {n for n in ranks if group_of(n) == group}
        missing = sorted(needed - set(names))
        if missing:
            raise ValueError(f"{group} is one fused layer in vLLM: an update must carry all of "
                             f"its parts, but {missing} are missing")


def shard(name: str, out_features: int, in_features: int, tp_rank: int,
          tp_size: int) -> tuple[int, slice]:
    """(dimension, slice) of W (out, in) that this rank's shard holds."""
    dim, size = (1, in_features) if name.rsplit(".", 1)[-1] in ROW_PARALLEL else (0, out_features)
    if size % tp_size:
        raise ValueError(f"{name}: dimension {size} does not split over {tp_size} ranks")
    step = size // tp_size
    return dim, slice(tp_rank * step, (tp_rank + 1) * step)


class _Checkpoint:
    """Read tensors (or slices of them) from a model directory's safetensors files."""

    def __init__(self, model_dir: str):
        root = Path(model_dir)
        index = root / "model.safetensors.index.json"
        if index.exists():
            files = json.loads(index.read_text())["weight_map"]
            self.where = {k: root / f for k, f in files.items()}
        else:
            with safe_open(root / "model.safetensors", "pt") as f:
                self.where = {k: root / "model.safetensors" for k in f.keys()}

    def shape(self, key: str) -> tuple[int, int]:
        with safe_open(self.where[key], "pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def get(self, key: str, dim: int, part: slice) -> torch.Tensor:
        with safe_open(self.where[key], "pt") as f:
            view = f.get_slice(key)
            return view[part] if dim == 0 else view[:, part]


class SVFWorker:
    """Methods vLLM adds to each worker. `self` is the worker (it has `model_runner`)."""

    def t2ray_load_svf(self, cache_dir: str, model_dir: str) -> dict:
        """Hold this rank's factor slices of every matrix in the SVD cache, and the base slices
        needed to restore them; returns the bytes held."""
        from vllm.distributed import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )

        from t2ray.artifacts import read_manifest
        from t2ray.svf.cache import SVD_CACHE

        manifest = read_manifest(cache_dir, SVD_CACHE)
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        base = _Checkpoint(model_dir)
        self.t2ray_svf = {"matrices": {}, "base": {}, "ranks": {}, "tp": (tp_rank, tp_size)}
        factor_bytes = 0
        for m in manifest["matrices"]:
            name, out_f, in_f = m["name"], m["out_features"], m["in_features"]
            dim, part = shard(name, out_f, in_f, tp_rank, tp_size)
            with safe_open(Path(cache_dir) / manifest["shards"][name], "pt") as f:
                u = f.get_slice(f"{name}.U")[part] if dim == 0 else f.get_tensor(f"{name}.U")
                s = f.get_tensor(f"{name}.S")
                vh = f.get_slice(f"{name}.Vh")[:, part] if dim == 1 else f.get_tensor(f"{name}.Vh")
            self.t2ray_svf["matrices"][name] = (u, s, vh, (out_f, in_f), dim, part)
            self.t2ray_svf["ranks"][name] = int(s.numel())
            factor_bytes += sum(t.numel() * t.element_size() for t in (u, s, vh))
        # base slices of every part of every fused layer the cache touches, cached or not
        groups = {group_of(n) for n in self.t2ray_svf["matrices"]}
        for group in groups:
            prefix, _, fused = group.rpartition(".")
            for module in FUSED_PARTS.get(fused, (fused,)):
                name = f"{prefix}.{module}"
                shape = base.shape(f"{name}.weight")
                dim, part = shard(name, *shape, tp_rank, tp_size)
                self.t2ray_svf["base"][name] = (shape, dim, part,
                                                base.get(f"{name}.weight", dim, part).clone())
        base_bytes = sum(t.numel() * t.element_size() for *_, t in self.t2ray_svf["base"].values())
        return {"tp_rank": tp_rank, "tp_size": tp_size, "factor_bytes": factor_bytes,
                "base_bytes": base_bytes}

    def t2ray_set_z(self, z: dict[str, bytes] | None, kind: str = "reference",
                    max_mult: float = 1.0) -> dict:
        """Load W' for every matrix in `z` (float32 bytes per matrix name) into vLLM, or the
        base weights again for every SVF matrix when `z` is None."""
        from t2ray.svf.expert import SVFParam, compose_weight

        t0 = time.perf_counter()
        state = self.t2ray_svf
        if z is None:
            names = list(state["matrices"])
        else:
            lengths = {n: len(b) // 4 for n, b in z.items()}
            check_update(list(z), state["ranks"], lengths)
            names = list(z)
        param = SVFParam(kind, max_mult)
        tensors = {}
        for name in names:
            u, s, vh, shape, dim, part = state["matrices"][name]
            if z is None:
                tensors[name] = self._placed(*state["base"][name])
                continue
            zz = torch.frombuffer(bytearray(z[name]), dtype=torch.float32)
            tensors[name] = self._placed(shape, dim, part, compose_weight(u, s, vh, zz, param))
        for group in {group_of(n) for n in names}:  # uncached parts of a fused layer: the base
            prefix, _, fused = group.rpartition(".")
            for module in FUSED_PARTS.get(fused, ()):
                name = f"{prefix}.{module}"
                if name not in tensors:
                    tensors[name] = self._placed(*state["base"][name])
        dtype = next(self.model_runner.get_model().parameters()).dtype
        self.model_runner.reload_weights(
            weights_iterator=iter([(f"{n}.weight", w.to(dtype)) for n, w in tensors.items()]),
            is_checkpoint_format=True)
        return {"matrices": len(tensors), "seconds": time.perf_counter() - t0}

    def t2ray_reload_checkpoint(self) -> dict:
        """Reload every weight from the model's files on disk: what a full weight sync costs
        (the comparison point for z-only sync)."""
        t0 = time.perf_counter()
        self.model_runner.reload_weights(is_checkpoint_format=True)
        return {"seconds": time.perf_counter() - t0}

    @staticmethod
    def _placed(shape, dim: int, part: slice, values: torch.Tensor) -> torch.Tensor:
        """A full-shape tensor holding `values` at this rank's slice (the loader takes it)."""
        full = torch.zeros(tuple(shape), dtype=values.dtype)
        if dim == 0:
            full[part] = values
        else:
            full[:, part] = values
        return full
