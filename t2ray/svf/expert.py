"""Expert vectors z and the SVF equations (Transformer², arXiv 2501.06252).

For a target matrix W = U diag(sigma) V^T and its expert vector z (length r = min(out, in)):

- `reference`: m = sigmoid(z) * max_mult,
  W' = U diag(sigma * m) V^T * (sum(sigma) / sum(sigma * m))   (a uniform m gives back W)
- `linear`:    W' = U diag(sigma * z) V^T                        (z = 1 gives back W)

Everything here acts on the *new singular values* sigma' = scales(z, sigma); recompose builds
W' = (U * sigma') V^T, the factorized path uses sigma' directly. One implementation for training,
evaluation and serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors.torch import load_file, save_file

from t2ray.artifacts import Format, read_manifest, write_manifest

# v2: the (out, in) shapes moved from `shapes` to the common `modules` field
SVF_EXPERT = Format("t2ray.svf-expert", 2, "an SVF expert",
                    make="train one with `t2ray svf train`",
                    refit="move it to this base with `t2ray svf transfer`, or train one on it")
PARAMETERISATIONS = ("reference", "linear")


@dataclass(frozen=True)
class SVFParam:
    """How z maps to singular values: `reference` (sigmoid, sum-preserving) or `linear`."""

    kind: str = "reference"
    max_mult: float = 1.0

    def __post_init__(self):
        if self.kind not in PARAMETERISATIONS:
            raise ValueError(f"unknown SVF parameterisation {self.kind!r}; "
                             f"choose one of {PARAMETERISATIONS}")

    def scales(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """New singular values sigma' for z of shape (..., r) and sigma of shape (r,), on sigma's
        device (experts are stored and shipped on the CPU, factors may live on a GPU)."""
        z = z.to(sigma.device)
        if self.kind == "linear":
            return sigma * z
        scaled = sigma * (torch.sigmoid(z) * self.max_mult)
        return scaled * (sigma.sum() / scaled.sum(dim=-1, keepdim=True))

    def identity(self, rank: int) -> torch.Tensor:
        """The z that gives back W exactly."""
        return torch.ones(rank) if self.kind == "linear" else torch.zeros(rank)

    def init(self, rank: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training initialisation: the reference's 0.1 + 0.01 noise, or ones (linear)."""
        if self.kind == "linear":
            return torch.ones(rank)
        return 0.1 + 0.01 * torch.randn(rank, generator=generator)


def compose_weight(u: torch.Tensor, sigma: torch.Tensor, vh: torch.Tensor, z: torch.Tensor,
                   param: SVFParam) -> torch.Tensor:
    """W' = U diag(sigma') V^T (differentiable in z)."""
    return (u * param.scales(z, sigma)) @ vh


@dataclass
class ExpertVector:
    """One z per target matrix, with what is needed to check it fits a base model."""

    z: dict[str, torch.Tensor]
    param: SVFParam = field(default_factory=SVFParam)
    base_fingerprint: str = ""
    targets: tuple[str, ...] = ()
    task: str | None = None
    metrics: dict = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (out, in) per matrix

    @classmethod
    def for_cache(cls, cache, z: dict[str, torch.Tensor], param: SVFParam,
                  task: str | None = None) -> "ExpertVector":
        """An expert on the matrices of an SVD cache (fingerprint, targets and shapes from it)."""
        return cls(z=z, param=param, base_fingerprint=cache.fingerprint,
                   targets=tuple(cache.manifest["targets"]), task=task,
                   shapes={n: (m.out_features, m.in_features) for n, m in cache.matrices.items()})

    @property
    def num_params(self) -> int:
        return sum(v.numel() for v in self.z.values())

    def ranks(self) -> dict[str, int]:
        return {k: int(v.numel()) for k, v in self.z.items()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.z.items()},
                  path / "expert.safetensors")
        write_manifest(path, SVF_EXPERT, base_fingerprint=self.base_fingerprint,
                       modules=self.shapes, targets=list(self.targets),
                       parameterisation=self.param.kind, max_mult=self.param.max_mult,
                       task=self.task, metrics=self.metrics, num_params=self.num_params,
                       ranks=self.ranks(), dtype="float32")
        return path

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None,
             expect_ranks: Mapping[str, int] | None = None) -> "ExpertVector":
        """Load an expert; refuse one made for another base model or other matrix shapes."""
        path = Path(path)
        m = read_manifest(path, SVF_EXPERT, expect_fingerprint=expect_fingerprint)
        shapes = m["modules"] if m["format_version"] >= 2 else m.get("shapes", {})
        z = load_file(path / "expert.safetensors")
        expert = cls(z=z, param=SVFParam(m["parameterisation"], m["max_mult"]),
                     base_fingerprint=m["base_fingerprint"], targets=tuple(m["targets"]),
                     task=m.get("task"), metrics=m.get("metrics", {}),
                     shapes={k: tuple(v) for k, v in shapes.items()})
        if expect_ranks is not None:
            check_ranks(expert.ranks(), dict(expect_ranks), what=f"expert {path}")
        return expert


def check_ranks(got: dict[str, int], want: dict[str, int], what: str) -> None:
    """Refuse a z set whose matrices or lengths differ from the model's, naming both."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = {k: (got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]}
    if missing or extra or bad:
        raise ValueError(
            f"{what} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"length (expert, model) {dict(list(bad.items())[:3])}")


MIX_SPACES = ("z", "mask")


def mix(experts: Iterable[ExpertVector], alpha: torch.Tensor, space: str = "z") -> ExpertVector:
    """A weighted mixture of experts, in one of two named spaces:

    - `z`: z_mix = sum_k alpha_k z_k (as trained; a one-hot alpha gives that expert exactly).
    - `mask` (the reference implementation's): the singular-value multipliers mix linearly,
      m_mix = sum_k alpha_k m_k with m_k = sigmoid(z_k) * max_mult. The reference
      parameterisation rescales sigma' to keep sum(sigma) per matrix, so W' depends on m only up
      to a positive factor: the mixture is stored as z = logit(m_mix / (2 max(m_mix))), exact. A
      matrix whose m_mix is all zero (alpha = 0) keeps the base weights. For the linear
      parameterisation the two spaces coincide.

    `alpha` is (K,) for one weight per expert or (K, M) for one per expert and matrix, with the
    matrices in the sorted order of the experts' keys.
    """
    if space not in MIX_SPACES:
        raise ValueError(f"mixing space must be one of {MIX_SPACES}, not {space!r}")
    experts = list(experts)
    if not experts:
        raise ValueError("mix() needs at least one expert")
    first = experts[0]
    for e in experts[1:]:
        if e.param != first.param or e.base_fingerprint != first.base_fingerprint:
            raise ValueError("cannot mix experts of different base models or parameterisations")
        check_ranks(e.ranks(), first.ranks(), what=f"expert {e.task!r}")
    names = sorted(first.z)
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if alpha.shape == (len(experts),):
        alpha = alpha[:, None].expand(len(experts), len(names))
    if alpha.shape != (len(experts), len(names)):
        raise ValueError(f"alpha has shape {tuple(alpha.shape)}; expected ({len(experts)},) or "
                         f"({len(experts)}, {len(names)})")
    if space == "mask" and (alpha < 0).any():
        raise ValueError("mask-space mixing needs alpha >= 0 (multipliers stay positive)")
    if space == "mask" and first.param.kind == "reference":
        z = {n: _mask_mix([e.z[n] for e in experts], alpha[:, j], first.param)
             for j, n in enumerate(names)}
    else:
        z = {n: sum(alpha[k, j] * experts[k].z[n] for k in range(len(experts)))
             for j, n in enumerate(names)}
    return ExpertVector(z=z, param=first.param, base_fingerprint=first.base_fingerprint,
                        targets=first.targets, task="mix",
                        metrics={"mixed_from": [e.task for e in experts]}, shapes=first.shapes)


def _mask_mix(zs: list[torch.Tensor], alpha: torch.Tensor, param: SVFParam) -> torch.Tensor:
    m = sum(a * torch.sigmoid(z.float()) * param.max_mult for a, z in zip(alpha, zs))
    top = m.max()
    if top <= 0:
        return param.identity(m.numel())
    return torch.logit(0.5 * m / top)


class ExpertLibrary:
    """A directory of experts, one sub-directory each: `<root>/<name>/{expert.safetensors,...}`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SVF_EXPERT.filename).exists())

    def add(self, name: str, expert: ExpertVector) -> Path:
        return expert.save(self.root / name)

    def get(self, name: str, **checks) -> ExpertVector:
        if name not in self.names():
            raise KeyError(f"no expert {name!r} in {self.root}; have {self.names()}")
        return ExpertVector.load(self.root / name, **checks)
