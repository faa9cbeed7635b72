"""What a server adapts with: a directory of experts, LoRAs, few-shot profiles and a T2L
checkpoint, loaded once at start-up with every artifact checked against the served base model.

    <library>/experts/<name>/     SVF experts (`route` is the classifier expert)
    <library>/loras/<name>/       LoRA adapters (PEFT directories)
    <library>/profiles/<name>/    few-shot profiles (alpha over the experts)
    <library>/t2l/                a T2L checkpoint (optional)
    <library>/routing.json        optional: the routers' abstention thresholds, chosen on the
                                  routing task's validation split (`t2ray serve calibrate`)
    <library>/manifest.json       optional: a serving kit's manifest (t2ray.serving-kit)

An artifact made for another base model is refused here, with one log line naming it and why,
and is then unknown to every request; a kit whose manifest names another base is refused whole.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from t2ray.adapt.profile import FewShotProfile, profile_names
from t2ray.artifacts import ArtifactError, Format, read_manifest, write_manifest
from t2ray.lora.peft_io import PEFT_CONFIG, import_peft
from t2ray.lora.weights import LoraWeights
from t2ray.serve.adaptation import Adaptation, AdaptationError
from t2ray.svf.expert import ExpertLibrary, ExpertVector, mix
from t2ray.t2l.generate import T2L_CHECKPOINT

log = logging.getLogger("ray.serve")

KIT_DIR = Path(__file__).parent / "kit"  # the packaged kit of the bundled tiny model
SERVING_KIT = Format("t2ray.serving-kit", 1, "a serving kit",
                     make="build one with `t2ray serve kit --out DIR`",
                     refit="rebuild the kit on this base with `t2ray serve kit` (its manifest "
                           "records the command that made it)")
CLASSIFIER = "route"  # the expert the `classifier` router applies
ROUTING = Format("t2ray.router-thresholds", 1, "router thresholds",
                 make="choose them with `t2ray serve calibrate LIBRARY`",
                 refit="choose them again on this base with `t2ray serve calibrate LIBRARY`",
                 filename="routing.json")


def _names(a: list[str]) -> str:
    return ", ".join(a) if a else "none"


@dataclass
class ServingLibrary:
    root: Path
    fingerprint: str
    experts: dict[str, ExpertVector] = field(default_factory=dict)
    loras: dict[str, LoraWeights] = field(default_factory=dict)
    profiles: dict[str, FewShotProfile] = field(default_factory=dict)
    t2l: Path | None = None
    refused: dict[str, str] = field(default_factory=dict)  # "experts/<name>" -> why
    kit: dict | None = None  # the kit manifest, when the library is a serving kit
    routing: dict[str, dict] = field(default_factory=dict)  # strategy -> threshold and accuracy

    @classmethod
    def open(cls, root: str | Path, fingerprint: str) -> "ServingLibrary":
        """Load everything under `root` that was made for the base `fingerprint`."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no serving library at {root}: give a directory with "
                                    "experts/, loras/, profiles/ or t2l/ (or build the kit with "
                                    "`t2ray serve kit`)")
        kit = None
        if (root / SERVING_KIT.filename).exists():
            kit = read_manifest(root, SERVING_KIT, expect_fingerprint=fingerprint)
        lib = cls(root, fingerprint, kit=kit)
        experts = ExpertLibrary(root / "experts")
        for name in experts.names():
            lib._try(f"experts/{name}", lambda n=name: lib.experts.__setitem__(
                n, experts.get(n, expect_fingerprint=fingerprint)))
        loras = root / "loras"
        for d in sorted(loras.iterdir()) if loras.is_dir() else []:
            if (d / PEFT_CONFIG).exists():
                lib._try(f"loras/{d.name}", lambda d=d: lib.loras.__setitem__(
                    d.name, import_peft(d, expect_fingerprint=fingerprint)))
        for name in profile_names(root / "profiles"):
            lib._try(f"profiles/{name}", lambda n=name: lib._add_profile(n))
        if (root / "t2l" / T2L_CHECKPOINT.filename).exists():
            lib._try("t2l", lambda: setattr(lib, "t2l", root / "t2l") or read_manifest(
                root / "t2l", T2L_CHECKPOINT, expect_fingerprint=fingerprint))
        if (root / ROUTING.filename).exists():
            lib._try("routing", lambda: setattr(lib, "routing", read_manifest(
                root, ROUTING, expect_fingerprint=fingerprint)["routers"]))
        log.info("serving library %s: experts [%s], loras [%s], profiles [%s], t2l %s, router "
                 "thresholds %s", root, _names(sorted(lib.experts)), _names(sorted(lib.loras)),
                 _names(sorted(lib.profiles)), "yes" if lib.t2l else "no",
                 lib.thresholds() or "none (never abstain)")
        return lib

    def thresholds(self) -> dict[str, float]:
        """Each router's abstention threshold (0 for a router without one: never abstains)."""
        return {name: r["threshold"] for name, r in self.routing.items()}

    def _try(self, what: str, load) -> None:
        try:
            load()
        except (ArtifactError, ValueError, KeyError) as e:
            if what == "t2l":
                self.t2l = None
            self.refused[what] = str(e)
            log.error("refused %s from the serving library: %s", what, e)

    def _add_profile(self, name: str) -> None:
        profile = FewShotProfile.load(self.root / "profiles" / name,
                                      expect_fingerprint=self.fingerprint)
        profile.mixture(self.experts)  # refuses a profile over experts this library lacks
        self.profiles[name] = profile

    # --- requests
    def _named(self, table: dict, what: str, name: str):
        if name not in table:
            raise AdaptationError(f"unknown {what} {name!r}; available: {_names(sorted(table))}")
        return table[name]

    def expert(self, name: str) -> ExpertVector:
        return self._named(self.experts, "expert", name)

    def check(self, a: Adaptation) -> None:
        """Refuse a library adaptation (expert, fewshot, mix, lora) whose names this library
        does not hold, naming the valid ones, without building its adapter."""
        if a.strategy == "expert":
            self.expert(a.name)
        elif a.strategy == "fewshot":
            self._named(self.profiles, "few-shot profile", a.name)
        elif a.strategy == "mix":
            for name, _ in a.weights:
                self.expert(name)
        elif a.strategy == "lora":
            self._named(self.loras, "LoRA", a.name)
        elif a.strategy != "none":
            raise ValueError(f"{a.strategy!r} adapters do not come from the library")

    def resolve(self, a: Adaptation) -> ExpertVector | LoraWeights | None:
        """The adapter of a library adaptation; None for `none` (names checked by `check`)."""
        self.check(a)
        if a.strategy == "expert":
            return self.experts[a.name]
        if a.strategy == "fewshot":
            return self.profiles[a.name].mixture(self.experts)
        if a.strategy == "mix":
            return mix([self.experts[n] for n, _ in a.weights], [w for _, w in a.weights])
        return self.loras[a.name] if a.strategy == "lora" else None

    def catalog(self) -> dict:
        """What GET /v1/experts lists."""
        return {
            "base_fingerprint": self.fingerprint, "library": str(self.root),
            "experts": [{"name": n, "task": e.task, "parameters": e.num_params,
                         "role": "classifier" if n == CLASSIFIER else "expert",
                         "base_fingerprint": e.base_fingerprint}
                        for n, e in sorted(self.experts.items())],
            "loras": [{"name": n, "rank": lo.rank, "scale": lo.scale,
                       "target_modules": list(lo.target_modules)}
                      for n, lo in sorted(self.loras.items())],
            "profiles": [{"name": n, "task": p.task, "experts": list(p.experts),
                          "alpha": list(p.alpha), "base_fingerprint": p.base_fingerprint}
                         for n, p in sorted(self.profiles.items())],
            "t2l": self.t2l is not None,
            "routers": self.routing,
            "refused": self.refused,
        }


def write_routing(root: str | Path, fingerprint: str, routers: dict[str, dict],
                  command: str) -> None:
    """Keep the routers' thresholds (`calibrate_routers`) in a library for the served base."""
    write_manifest(root, ROUTING, base_fingerprint=fingerprint, modules={}, routers=routers,
                   command=command)


def assemble_kit(out: str | Path, fingerprint: str, command: str, experts: dict[str, Path],
                 loras: dict[str, Path], profiles: dict[str, Path], t2l: Path | None,
                 routing: dict[str, dict] | None = None) -> dict:
    """Copy trained artifacts into a serving-kit directory (the layout `ServingLibrary` reads)
    and write its manifest: base fingerprint, the command that built it, contents and sizes.
    Every artifact is checked against `fingerprint` before it is copied; `routing` is the
    routers' thresholds (`calibrate_routers`)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    copies = {**{f"experts/{n}": p for n, p in experts.items()},
              **{f"loras/{n}": p for n, p in loras.items()},
              **{f"profiles/{n}": p for n, p in profiles.items()},
              **({"t2l": t2l} if t2l else {})}
    for rel, src in copies.items():
        shutil.copytree(src, out / rel, ignore=shutil.ignore_patterns("*.tmp", "__pycache__"))
    if routing:
        write_routing(out, fingerprint, routing, command)
        copies[ROUTING.filename] = out / ROUTING.filename
    lib = ServingLibrary.open(out, fingerprint)
    if lib.refused:
        raise ArtifactError(f"not building a kit from artifacts of another base: {lib.refused}")
    sizes = {rel: sum(f.stat().st_size for f in [out / rel, *(out / rel).rglob("*")]
                      if f.is_file()) for rel in copies}
    return write_manifest(out, SERVING_KIT, base_fingerprint=fingerprint, modules={},
                          command=command, bytes=sizes, total_bytes=sum(sizes.values()))
