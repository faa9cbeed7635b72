"""The `adaptation` field of a request: which second pass answers it.

    none                       the base weights
    prompt | classifier        pass 1 routes the question (base weights / classifier expert)
    expert:<name>              one library expert, recomposed (a multiplexed "hot" model)
    fewshot:<profile>          a stored few-shot alpha over the library's experts (hot as well)
    mix:{"name": w, ...}       a per-request mixture sum_k w_k z_k (factorized, batched per row)
    lora:<name>                a library LoRA
    t2l:<description>          a LoRA generated from the description by the T2L checkpoint
    adapter:<id>               an adapter generated earlier (POST /v1/adapters or t2l:)

Parsing checks the form and the limits; whether a name exists is the library's to say.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

ROUTED = ("prompt", "classifier")
NAMED = ("expert", "fewshot", "lora", "adapter")
STRATEGIES = ("none", *ROUTED, *NAMED, "mix", "t2l")


class AdaptationError(ValueError):
    """A request's adaptation that cannot be served; `param` names the request field."""

    def __init__(self, message: str, param: str = "adaptation"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Adaptation:
    strategy: str
    name: str | None = None  # expert, profile, LoRA or adapter id
    weights: tuple[tuple[str, float], ...] = ()  # mix: (expert, weight), sorted by name
    description: str | None = None  # t2l

    def __str__(self) -> str:
        if self.strategy == "mix":
            return "mix:" + json.dumps(dict(self.weights), sort_keys=True)
        if self.strategy == "t2l":
            return f"t2l:{self.description}"
        return f"{self.strategy}:{self.name}" if self.name else self.strategy


def parse_adaptation(value: str | None, default: str, max_mix_entries: int) -> Adaptation:
    """The adaptation a request asks for (`default` when it names none)."""
    text = default if value is None else value
    if not isinstance(text, str) or not text.strip():
        raise AdaptationError(f"adaptation must be a non-empty string, one of: "
                              f"{', '.join(STRATEGIES)} (with ':<argument>' where it takes one)")
    head, sep, arg = text.strip().partition(":")
    if head not in STRATEGIES:
        raise AdaptationError(f"unknown adaptation {head!r}; choose one of {list(STRATEGIES)}")
    if head in ("none", *ROUTED):
        if sep:
            raise AdaptationError(f"adaptation {head!r} takes no argument (got {text!r})")
        return Adaptation(head)
    if not arg.strip():
        raise AdaptationError(f"adaptation {head!r} needs an argument: '{head}:<...>'")
    if head in NAMED:
        return Adaptation(head, name=arg.strip())
    if head == "t2l":
        return Adaptation(head, description=arg.strip())
    return Adaptation("mix", weights=parse_mix(arg, max_mix_entries))


def parse_mix(text: str, max_entries: int) -> tuple[tuple[str, float], ...]:
    """{"expert": weight, ...}: finite, non-negative weights, not all zero, at most
    `max_entries` of them."""
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdaptationError(f'mix: expects a JSON object such as {{"math": 0.7, "code": 0.3}} '
                              f"({e.msg})") from None
    if not isinstance(weights, dict) or not weights:
        raise AdaptationError('mix: expects a non-empty JSON object {"expert": weight, ...}')
    if len(weights) > max_entries:
        raise AdaptationError(f"mix: has {len(weights)} entries; at most {max_entries} are "
                              "allowed")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or w < 0:
            raise AdaptationError(f"mix: weight of {name!r} must be a finite number >= 0 "
                                  f"(got {w!r})")
    if not any(weights.values()):
        raise AdaptationError("mix: weights are all zero; use adaptation 'none' for the base "
                              "model")
    return tuple(sorted((str(k), float(v)) for k, v in weights.items()))
