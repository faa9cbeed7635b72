"""The one manifest reader/writer of t2ray's artifacts (SVD caches, SVF experts, LoRA adapters,
T2L checkpoints).

An artifact is a directory of safetensors plus a JSON manifest: the format name and version, the
t2ray version that wrote it, the base model's weights fingerprint, the module names with their
(out, in) shapes, and the fields of its kind. Loading refuses, in one wording for every kind, a
directory that is not that kind, a format newer than this t2ray reads, and an artifact made for
another base model; each refusal says what to do about it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import t2ray


@dataclass(frozen=True)
class Format:
    """One artifact kind, and what its refusals tell the user."""

    name: str  # e.g. "t2ray.svf-expert"
    version: int  # the newest version this t2ray writes and reads
    what: str  # e.g. "an SVF expert"
    make: str  # how to make one, e.g. "train one with `t2ray svf train`"
    refit: str  # what to do when it was made for another base model
    filename: str = "manifest.json"
    untagged_v1: bool = False  # manifests from before format names existed are version 1


class ArtifactError(ValueError):
    """An artifact that cannot be used here; the message names the problem and the fix."""


def _refuse(path: str | Path, problem: str, fix: str) -> ArtifactError:
    return ArtifactError(f"{path} {problem}; {fix}")


def not_found(path: str | Path, kinds: Sequence[Format], filename: str) -> ArtifactError:
    """`path` holds no `filename`, so it is none of `kinds`."""
    return _refuse(path, f"is not {' or '.join(k.what for k in kinds)} (no {filename})",
                   " or ".join(k.make for k in kinds))


def check_fingerprint(path: str | Path, kind: Format, recorded: str | None,
                      expected: str | None) -> None:
    """Refuse an artifact made for another base model (None: not recorded or not asked, so no
    check is possible)."""
    if expected is not None and recorded is not None and recorded != expected:
        raise _refuse(path, f"is {kind.what} made for base model {recorded}, this base is "
                            f"{expected}", kind.refit)


def write_manifest(path: str | Path, kind: Format, *, base_fingerprint: str | None,
                   modules: Mapping[str, Sequence[int]], **fields) -> dict:
    """Write `path/<kind.filename>`; `modules` maps full module names to (out, in)."""
    manifest = {"format": kind.name, "format_version": kind.version,
                "t2ray_version": t2ray.__version__, "base_fingerprint": base_fingerprint,
                "modules": {name: list(shape) for name, shape in modules.items()}, **fields}
    (Path(path) / kind.filename).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(path: str | Path, kinds: Format | Sequence[Format], *,
                  expect_fingerprint: str | None = None) -> dict:
    """The manifest of the artifact at `path`, which must be one of `kinds` (all with the same
    file name), in a version this t2ray reads and, if `expect_fingerprint` is given, made for that
    base model. A manifest without `format_version` is version 1."""
    kinds = (kinds,) if isinstance(kinds, Format) else tuple(kinds)
    file = Path(path) / kinds[0].filename
    if not file.exists():
        raise not_found(path, kinds, file.name)
    manifest = json.loads(file.read_text())
    found = manifest.get("format")
    kind = next((k for k in kinds if k.name == found or (found is None and k.untagged_v1)), None)
    if kind is None:
        raise _refuse(path, f"is not {' or '.join(k.what for k in kinds)} (its {file.name} says "
                            f"format {found!r})", " or ".join(k.make for k in kinds))
    manifest["format"] = kind.name
    manifest.setdefault("format_version", 1)
    if manifest["format_version"] > kind.version:
        raise _refuse(path, f"holds {kind.what} in format version {manifest['format_version']}, "
                            f"written by a newer t2ray ({manifest.get('t2ray_version')}); "
                            f"t2ray {t2ray.__version__} reads up to version {kind.version}",
                      "upgrade t2ray")
    check_fingerprint(path, kind, manifest.get("base_fingerprint"), expect_fingerprint)
    return manifest
