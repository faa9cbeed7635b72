"""SVD of every target matrix, cached once per base model.

The cache is a directory of safetensors shards (one per decoder layer, or per group of modules)
plus `manifest.json` (`t2ray.artifacts`: base fingerprint, modules and shapes; here also
targets, shards and reconstruction errors).
Shards are decomposed in parallel as Ray tasks when Ray is running and in-process otherwise; an
interrupted run resumes from the shards already written; a cache made for other weights is
refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from t2ray.artifacts import Format, check_fingerprint, read_manifest, write_manifest
from t2ray.models import weights_fingerprint
from t2ray.svf.targets import (
    TargetMatrix,
    find_targets,
    layer_index,
    resolve_targets,
    weight_of,
)

SVD_CACHE = Format("t2ray.svd-cache", 1, "an SVD cache",
                   make="make one with `t2ray svf decompose --model <base>`",
                   refit="decompose this base into a new directory (`t2ray svf decompose`)")
RECON_TOLERANCE = 1e-5  # relative Frobenius error of U diag(S) V^T against W, fp32


def svd_factors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(U, S, Vh, relative reconstruction error of the fp32 factors) of W (out, in), computed on
    W's device and returned in fp32 on the CPU, where the cache is written. On a GPU the SVD
    runs in float64: cuSOLVER's fp32 SVD of Llama-3.1-8B-shaped MLP matrices missed the
    tolerance (1.05e-3 relative on an H200, docs/benchmarks.md)."""
    work = torch.float64 if w.is_cuda else torch.float32
    wd = w.detach().to(work)
    u, s, vh = (t.float() for t in torch.linalg.svd(wd, full_matrices=False))
    recon = (u.to(work) * s.to(work)) @ vh.to(work)
    err = float(torch.linalg.norm(recon - wd) / torch.linalg.norm(wd).clamp_min(1e-30))
    return u.cpu().contiguous(), s.cpu().contiguous(), vh.cpu().contiguous(), err


def decompose_shard(weights: dict[str, torch.Tensor], threads: int = 1) -> tuple[dict, dict]:
    """SVD of one shard's matrices: (tensors for safetensors, {name: relative error})."""
    torch.set_num_threads(threads)
    tensors, errors = {}, {}
    for name, w in weights.items():
        u, s, vh, err = svd_factors(w)
        tensors.update({f"{name}.U": u, f"{name}.S": s, f"{name}.Vh": vh})
        errors[name] = err
    return tensors, errors


def _shard_key(name: str) -> str:
    """Group matrices by decoder layer (`...layers.12...` -> `layer-00012`)."""
    layer = layer_index(name)
    return "other" if layer is None else f"layer-{layer:05d}"


class SVDCache:
    """Read access to a finished cache: factors per matrix, the manifest, checks."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, SVD_CACHE)
        self.matrices = {m["name"]: TargetMatrix(**{k: m[k] for k in
                                                    ("name", "out_features", "in_features",
                                                     "transposed")})
                         for m in self.manifest["matrices"]}
        self._factors: dict[str, torch.Tensor] = {}

    @property
    def fingerprint(self) -> str:
        return self.manifest["base_fingerprint"]

    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.matrices.items()}

    def _load(self) -> dict[str, torch.Tensor]:
        if not self._factors:
            for shard in sorted(set(self.manifest["shards"].values())):
                self._factors.update(load_file(self.root / shard))
        return self._factors

    def to(self, device: str | torch.device) -> "SVDCache":
        """Keep the factors on `device`: on a GPU, W' is then composed there, not on the CPU."""
        self._factors = {k: v.to(device) for k, v in self._load().items()}
        return self

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._load()
        return (self._factors[f"{name}.U"], self._factors[f"{name}.S"],
                self._factors[f"{name}.Vh"])

    def check_model(self, model: torch.nn.Module, fingerprint: str | None = None) -> None:
        check_fingerprint(self.root, SVD_CACHE, self.fingerprint,
                          fingerprint or weights_fingerprint(model))


def decompose(model: torch.nn.Module, targets, out: str | Path, use_ray: bool | None = None,
              progress: bool = True) -> SVDCache:
    """Decompose the target matrices of `model` into a cache at `out` (resuming if partial)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = weights_fingerprint(model)
    names = resolve_targets(targets)
    matrices = find_targets(model, names)
    if (out / SVD_CACHE.filename).exists():
        cache = SVDCache(out)
        cache.check_model(model, fingerprint)
        if set(cache.matrices) == {m.name for m in matrices}:
            return cache
        raise ValueError(f"{out} caches other targets ({sorted(cache.manifest['targets'])}); "
                         "use another directory")
    progress_path = out / "progress.json"
    state = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    if state and state["base_fingerprint"] != fingerprint:
        raise ValueError(f"{out} holds a partial cache of another model "
                         f"({state['base_fingerprint']} != {fingerprint}); use another directory")
    state = state or {"base_fingerprint": fingerprint, "done": {}}

    modules = dict(model.named_modules())
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for m in matrices:
        shards.setdefault(_shard_key(m.name), {})[m.name] = weight_of(modules[m.name],
                                                                       m.transposed)
    todo = [k for k in sorted(shards) if k not in state["done"]]

    def record(key: str, tensors: dict, errors: dict) -> None:
        save_file(tensors, out / f"{key}.safetensors")
        state["done"][key] = errors
        progress_path.write_text(json.dumps(state))

    if use_ray is None:  # Ray when this process already runs it (Ray need not be installed)
        ray = sys.modules.get("ray")
        use_ray = ray is not None and ray.is_initialized()
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc="svd shards",
               disable=not progress)
    if use_ray and todo:
        import ray

        remote = ray.remote(num_cpus=1)(decompose_shard)
        pending = {remote.remote({n: w.detach().cpu() for n, w in shards[k].items()}): k
                   for k in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ready[0])
            record(key, *ray.get(ready[0]))
            bar.update()
    else:
        for key in todo:
            record(key, *decompose_shard(shards[key], threads=torch.get_num_threads()))
            bar.update()
    bar.close()

    errors = {n: e for errs in state["done"].values() for n, e in errs.items()}
    worst = max(errors.values())
    if worst > RECON_TOLERANCE:
        raise ArithmeticError(f"SVD reconstruction error {worst:.2e} > {RECON_TOLERANCE}")
    write_manifest(out, SVD_CACHE, base_fingerprint=fingerprint,
                   modules={m.name: (m.out_features, m.in_features) for m in matrices},
                   targets=list(names), dtype="float32",
                   matrices=[{**asdict(m), "rank": m.rank, "recon_error": errors[m.name]}
                             for m in matrices],
                   shards={m.name: f"{_shard_key(m.name)}.safetensors" for m in matrices},
                   max_recon_error=worst)
    progress_path.unlink()
    return SVDCache(out)
