"""Core task types: an example, a task with deterministic content-based splits, and its reward."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable

SPLITS = ("train", "validation", "test")
# Share of the *content space* that goes to each split (split by content key, never by text).
SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.10, "test": 0.20}


@dataclass(frozen=True)
class Example:
    """One task instance.

    `prompt` is the user-facing question (no chat template applied); `solution` is the reference
    completion a model is trained on; `answer` is the canonical gold answer the verifier checks
    (a number, a letter A-D, or the expected output text). `meta` carries what the verifier needs
    (code tests and entry point, choices, ...).
    """

    task: str
    uid: str
    prompt: str
    answer: str
    solution: str
    meta: dict[str, Any] = field(default_factory=dict)


def content_split(key: str) -> str:
    """Deterministic split of a content key: train / validation / test by a stable hash."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    if h < SPLIT_FRACTIONS["train"]:
        return "train"
    if h < SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["validation"]:
        return "validation"
    return "test"


def stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclass
class Task:
    """A task family: descriptions, a verifier kind and a deterministic example generator.

    `generate(rng)` draws one example and returns it with its *content key*; the content key
    decides the split, so a test item's underlying content (its number tuple, its word list...)
    never appears in training under a different wording.
    """

    name: str
    family: str
    kind: str  # "numeric" | "choice" | "boxed" | "code" | "exact"
    descriptions: list[str]
    generate: Callable[[random.Random], tuple[str, Example]]
    split_sizes: dict[str, int] = field(
        default_factory=lambda: {"train": 4000, "validation": 500, "test": 1000}
    )
    seen: bool = True  # False for the held-out families (unseen at expert / T2L training time)
    group: str = "core"  # "core" (math/code/reasoning and their hard forms) or "instruct"
    # A plausible but wrong solution in the task's own style (e.g. a skipped reasoning step). Used
    # only by the base-model corpus to keep skills *latent* (see t2ray/experiments/pretrain.py).
    distractor: Callable[[Example, random.Random], str] | None = None
    # A closed answer set (the routing task's categories): RL samples among these labels by
    # their log-probabilities instead of generating freely, and accuracy is the top label's.
    labels: tuple[str, ...] | None = None
    # Paraphrase probes: descriptions held back from every training use (seen families only).
    probe_descriptions: list[str] = field(default_factory=list)
    # An opaque per-family tag (e.g. "T17") that pretraining pairs with the family's examples.
    tag: str | None = None
    cell: tuple[str, str] | None = None  # (operation, argument) of a grid family
    # v2: each content key at most once per split (v1 de-duplicated by prompt text only)
    distinct_keys: bool = False

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The first `n` examples of a split (default: the split's full size), deterministic."""
        return [ex for _, ex in self.keyed_examples(split, n, seed)]

    def content_keys(self, split: str, n: int | None = None, seed: int = 0) -> list[str]:
        """The content key of each example of `examples(split, n, seed)`."""
        return [key for key, _ in self.keyed_examples(split, n, seed)]

    def keyed_examples(self, split: str, n: int | None = None,
                       seed: int = 0) -> list[tuple[str, Example]]:
        """(content key, example) pairs of `examples(split, n, seed)`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        n = self.split_sizes[split] if n is None else n
        rng = random.Random(stable_seed(self.name, split, seed))
        out: list[tuple[str, Example]] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n:
            key, ex = self.generate(rng)
            ident = key if self.distinct_keys else ex.uid
            if content_split(f"{self.name}|{key}") != split or ident in seen:
                misses += 1
                if misses > 200 * n + 10_000:
                    raise RuntimeError(
                        f"task {self.name!r}: content space too small for {n} {split} examples "
                        f"(found {len(out)})")
                continue
            seen.add(ident)
            out.append((key, ex))
        return out

    def items_fingerprint(self, split: str, n: int | None = None) -> str:
        """Content hash of the items `examples(split, n)` returns (a resume key's part)."""
        uids = "|".join(e.uid for e in self.examples(split, n))
        return hashlib.sha256(uids.encode()).hexdigest()[:16]

    def reward(self, example: Example, completion: str, **kwargs: Any) -> float:
        from t2ray.tasks.rewards import reward

        return reward(self.kind, example, completion, **kwargs)


def make_uid(task: str, text: str) -> str:
    return hashlib.sha256(f"{task}|{text}".encode()).hexdigest()[:16]
