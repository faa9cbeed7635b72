"""The routing task: which expert category does a question belong to?

Pass 1 of two-pass adaptation. Its items are questions from the *train* splits of the seen
families (labelled with their family) and of the seen instruction families (labelled `other`,
which means the base weights). From suite v2 on, half of the `other` items are inputs that fit
no expert at all (chat, trivia, requests for prose, strings of letters), so that a router learns
to keep the base weights for them rather than only for instruction tasks. The unseen families
never occur in it - the reference's classifier data overlapped its unseen evaluation task. The
routing task's own train / validation / test splits partition those questions by their source
uid.
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


_TOPICS = ("the sea", "autumn", "a city at night", "friendship", "the moon", "a long train ride",
           "rain", "an old house", "a garden", "winter mornings", "a lost key", "the mountains")
_PLACES = ("France", "Japan", "Peru", "Kenya", "Norway", "Canada", "Egypt", "Chile", "India",
           "Spain", "Ghana", "Poland")
_THINGS = ("whales", "owls", "volcanoes", "tea", "glaciers", "bees", "comets", "bridges",
           "violins", "deserts", "coral reefs", "lighthouses")
_NAMES = ("Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Greta", "Hugo", "Ines", "Jon", "Kai", "Lea")
_OFF_TOPIC = (
    "Write a short poem about {topic}.", "What is the capital of {place}?",
    "Tell me an interesting fact about {thing}.", "Say hello to {name} and wish them a good day.",
    "Describe {topic} in two sentences.", "Why do people like {thing}?",
    "Suggest a name for a cafe in {place}.", "Write a thank-you note to {name}.",
    "How do you say good morning in the language of {place}?",
    "Tell {name} a story about {thing}.", "What does {topic} make you feel?",
    "Recommend a book about {thing} for {name}.",
)


def off_topic_question(rng: random.Random) -> str:
    """An input that fits no expert: chat, trivia or prose, or (one in five) a string of letters."""
    if rng.random() < 0.2:
        return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                for _ in range(rng.randint(2, 7)))
                        for _ in range(rng.randint(2, 6)))
    return rng.choice(_OFF_TOPIC).format(topic=rng.choice(_TOPICS), place=rng.choice(_PLACES),
                                         thing=rng.choice(_THINGS), name=rng.choice(_NAMES))


def _route_generator(suite: str):
    def generate(rng: random.Random) -> tuple[str, Example]:
        label = rng.choice(CATEGORIES)
        if label == "other" and suite != "v1" and rng.random() < 0.5:
            question = off_topic_question(rng)
            source_task, source_uid = "off-topic", make_uid("off-topic", question)
        else:
            source = rng.choice(_sources(suite)[label])
            question, source_task, source_uid = source.prompt, source.task, source.uid
        prompt = route_prompt(question)
        ex = Example("route", make_uid("route", prompt), prompt, label, label,
                     {"source_task": source_task, "source_uid": source_uid})
        return source_uid, ex

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
