"""Few-shot profiles: the alpha a few-shot search found for a task, stored so that a server can
mix the library's experts with it later without searching again.

A profile is an artifact directory (`t2ray.artifacts`) whose manifest holds the task, the alpha,
the experts it mixes (by name, in alpha's order) and the base fingerprint; `t2ray eval --strategy
fewshot` writes one per task and seed, and `fewshot:<profile>` on the serving endpoint uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from t2ray.adapt.fewshot import alpha_mixture
from t2ray.artifacts import Format, read_manifest, write_manifest
from t2ray.svf.expert import ExpertVector

FEWSHOT_PROFILE = Format("t2ray.fewshot-profile", 1, "a few-shot profile",
                         make="run `t2ray eval --strategy fewshot`, which writes one per task",
                         refit="search a new alpha on this base (`t2ray eval --strategy fewshot`)")


@dataclass(frozen=True)
class FewShotProfile:
    task: str
    alpha: tuple[float, ...]  # K weights, or K x matrices (per-matrix search), flat
    experts: tuple[str, ...]  # the library experts alpha weighs, in its order
    base_fingerprint: str
    mix_space: str = "z"  # how alpha mixes the experts (`t2ray.svf.expert.mix`)

    def __post_init__(self):
        if not self.experts or len(self.alpha) % len(self.experts):
            raise ValueError(f"alpha of length {len(self.alpha)} does not weigh the "
                             f"{len(self.experts)} experts {list(self.experts)}")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_manifest(path, FEWSHOT_PROFILE, base_fingerprint=self.base_fingerprint,
                       modules={}, task=self.task, alpha=list(self.alpha),
                       experts=list(self.experts), mix_space=self.mix_space)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> "FewShotProfile":
        m = read_manifest(path, FEWSHOT_PROFILE, expect_fingerprint=expect_fingerprint)
        return cls(m["task"], tuple(m["alpha"]), tuple(m["experts"]), m["base_fingerprint"],
                   m.get("mix_space", "z"))

    def mixture(self, experts: dict[str, ExpertVector]) -> ExpertVector:
        """The mixed expert: the named experts weighed by alpha (`alpha_mixture`)."""
        missing = sorted(set(self.experts) - set(experts))
        if missing:
            raise KeyError(f"profile for {self.task!r} mixes experts {missing} that the library "
                           f"does not hold (it has {sorted(experts)})")
        return alpha_mixture([experts[n] for n in self.experts], list(self.alpha), self.mix_space)


def profile_names(root: str | Path) -> list[str]:
    """The profiles stored under `root`, one sub-directory each."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / FEWSHOT_PROFILE.filename).exists())
