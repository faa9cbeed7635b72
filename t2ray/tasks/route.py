"""The routing task: which expert category does a question belong to?

Pass 1 of two-pass adaptation. Its items are questions from the *train* splits of the seen
families (labelled with their family) and of the seen instruction families (labelled `other`,
which means the base weights). The unseen families never occur in it - the reference's classifier
data overlapped its unseen evaluation task. The routing task's own train / validation / test
splits partition those questions by their source uid.
"""

from __future__ import annotations

import random
from functools import lru_cache

from t2ray.tasks.base import Example, Task, make_uid

CATEGORIES = ("math", "code", "reasoning", "other")
ROUTE_PROMPT = ("Which kind of question is this: math, code, reasoning or other?\n"
                "Question: {question}")


def route_prompt(question: str) -> str:
    return ROUTE_PROMPT.format(question=question)


def question_of(prompt: str) -> str:
    """The question inside a routing prompt (`route_prompt`'s inverse)."""
    head = ROUTE_PROMPT.split("{question}")[0]
    if not prompt.startswith(head):
        raise ValueError("not a routing prompt")
    return prompt[len(head):]


@lru_cache(maxsize=None)
def _sources(suite: str) -> dict[str, list[Example]]:
    from t2ray.tasks import CORE_SEEN, get_task, list_tasks

    sources = {name: get_task(name, suite).examples("train") for name in CORE_SEEN}
    sources["other"] = [ex for t in list_tasks("instruct", suite) if t.seen
                        for ex in t.examples("train", 40)]
    return sources


def _route_generator(suite: str):
    def generate(rng: random.Random) -> tuple[str, Example]:
        label = rng.choice(CATEGORIES)
        source = rng.choice(_sources(suite)[label])
        prompt = route_prompt(source.prompt)
        ex = Example("route", make_uid("route", prompt), prompt, label, label,
                     {"source_task": source.task, "source_uid": source.uid})
        return source.uid, ex

    return generate


def route_task(suite: str = "v1") -> Task:
    return Task(name="route", family="route", kind="exact",
                descriptions=[
                    "Say whether a question is math, code, reasoning or other.",
                    "Classify a question into the expert category that should answer it.",
                    "Route each question to math, code, reasoning or other.",
                    "Name the kind of problem a question poses.",
                    "Pick the category of a question: math, code, reasoning, other.",
                ],
                generate=_route_generator(suite),
                split_sizes={"train": 2000, "validation": 200, "test": 400},
                seen=True, group="route", labels=CATEGORIES)
