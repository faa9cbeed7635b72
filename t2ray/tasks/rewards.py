"""Verifiable rewards: +1 for a correct completion, -1 otherwise (as in the reference).

One implementation per verifier kind, used by training, evaluation and serving alike.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from t2ray.tasks.base import Example

CORRECT, WRONG = 1.0, -1.0

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_LETTER = re.compile(r"answer is\s*\(?([A-D])\b")
_LONE_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
_CODE_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def last_number(text: str) -> float | None:
    """The last number in `text` (GSM8K convention), commas ignored; None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def parse_choice(text: str) -> str | None:
    """The chosen letter: 'answer is X' if present, else the last lone A-D; None when absent.

    A completion without a parsable letter is wrong - never credited as a random guess.
    """
    m = _ANSWER_LETTER.findall(text)
    if m:
        return m[-1]
    m = _LONE_LETTER.findall(text)
    return m[-1] if m else None


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (balanced braces), as MATH answers are written."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def normalize_math(answer: str) -> str:
    s = answer.strip().strip("$").replace(" ", "").replace("\\!", "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("\\left", "").replace("\\right", "")
    return s.rstrip(".")


def extract_code(completion: str) -> str:
    """The code in a completion: the first fenced block if there is one, else the text itself."""
    m = _CODE_FENCE.search(completion)
    return m.group(1) if m else completion


def build_program(example: Example, completion: str) -> str:
    """The program a code verifier runs: prompt prefix (HumanEval style) + code + tests."""
    prefix = example.meta.get("code_prefix", "")
    return f"{prefix}{extract_code(completion)}\n\n{example.meta['tests']}\n"


def numeric_correct(completion: str, gold: str) -> bool:
    got = last_number(completion)
    return got is not None and abs(got - float(gold.replace(",", ""))) < 1e-6


def boxed_correct(completion: str, gold: str) -> bool:
    got = last_boxed(completion)
    if got is not None and normalize_math(got) == normalize_math(gold):
        return True
    try:
        return got is not None and abs(float(normalize_math(got)) - float(normalize_math(gold))) < 1e-6
    except ValueError:
        return False


def exact_correct(completion: str, gold: str) -> bool:
    first_line = completion.strip().split("\n", 1)[0].strip()
    return first_line == gold.strip()


def reward(kind: str, example: Example, completion: str, **sandbox_kwargs: Any) -> float:
    """Reward of one completion. Code is executed in the sandbox (never in this process)."""
    if kind == "numeric":
        ok = numeric_correct(completion, example.answer)
    elif kind == "choice":
        ok = parse_choice(completion) == example.answer
    elif kind == "boxed":
        ok = boxed_correct(completion, example.answer)
    elif kind == "exact":
        golds = example.meta.get("all_outputs") or [example.answer]
        ok = any(exact_correct(completion, g) for g in golds)
    elif kind == "code":
        from t2ray.sandbox import run_python

        ok = _code_passed(run_python(build_program(example, completion), **sandbox_kwargs))
    else:
        raise ValueError(f"unknown reward kind {kind!r}")
    return CORRECT if ok else WRONG


def rewards(kind: str, examples: Sequence[Example], completions: Sequence[str]) -> list[float]:
    """Rewards of many completions; code runs in parallel in a sandbox pool."""
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    if kind != "code":
        return [reward(kind, e, c) for e, c in zip(examples, completions)]
    from t2ray.sandbox import SandboxPool

    with SandboxPool() as pool:
        results = pool.map([build_program(e, c) for e, c in zip(examples, completions)])
    return [CORRECT if _code_passed(r) else WRONG for r in results]


def _code_passed(result) -> bool:
    """A sandbox that could not run the program is an infrastructure failure, not a wrong answer."""
    if result.verdict == "error":
        raise RuntimeError(f"the code sandbox failed to run a program: {result.stderr[-500:]}")
    return result.passed


class RewardCache:
    """Rewards of (item, completion) pairs, each verified once.

    Sampled rollouts repeat themselves (more so as a policy sharpens), and verifying code costs a
    sandboxed process per program; a training run keeps one cache.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.scores: dict[tuple[str, str], float] = {}

    def __call__(self, examples: Sequence[Example], completions: Sequence[str]) -> list[float]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        todo = {(e.uid, c): (e, c) for e, c in zip(examples, completions)
                if (e.uid, c) not in self.scores}
        if todo:
            pairs = list(todo.values())
            fresh = rewards(self.kind, [e for e, _ in pairs], [c for _, c in pairs])
            self.scores.update(zip(todo, fresh))
        return [self.scores[(e.uid, c)] for e, c in zip(examples, completions)]
