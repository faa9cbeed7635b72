"""The six core families, v2: every unseen family reads like its seen counterpart and needs that
family's sub-skill plus one new step (the paper's MATH / HumanEval / ARC-Challenge read like GSM8K /
MBPP / ARC-Easy), and reasoning has a worked form that decomposes the choice.

- math-hard reads like a math word problem and draws on math's worked form (one step per
  equation); it adds a third step.
- code-hard reads like a code one-liner ("Write a function f(x) that returns ...") and draws on
  code's operator phrasings; it adds a second operation.
- reasoning-hard reads like a reasoning choice item and draws on reasoning's worked form, which
  states each option's value; it adds a harder comparison (closest to t, second largest, most
  vowels).

Reasoning's worked form states each option's value with a verdict that needs only that option and
the line before it, then the letter: a running best for comparisons ("A=34, best A 34. B=81, best
B 81. C=12, best B 81. D=57, best B 81. Largest: B. The answer is B."; second largest keeps the top
two), a yes/no per option for properties ("A=moth m, no. B=snake s, yes. ... Starts with s: B."),
so a model that follows it makes the choice in small local steps; the bare form ("The answer is
B.") makes it in one. (A first form stated the values and then the letter, "A=34. B=81. C=12.
D=57. Largest: B."; the letter was still one step over four values, and a base trained on it was
right 30% of the time forced into it against 27% bare.)

Content keys are the underlying content (numbers, operations, options), and v2 tasks draw each
content at most once per split (`Task.distinct_keys`).
"""

from __future__ import annotations

import random

from t2ray.tasks.base import Example, Task, make_uid
from t2ray.tasks.core import (
    CODE_FORMS,
    CODE_OPS,
    FUNC_NAMES,
    LETTERS,
    NAMES,
    OBJECTS,
    WORDS,
    _apply,
    _code_tests,
    _mc,
)

K_MAX = 250  # code constants: 13 operations x 250 constants, so test holds 500+ contents

# ---------------------------------------------------------------- math and math-hard
# (story, its operations); the hard forms add a third step to the same kind of story
MATH_FORMS = [
    ("{n} has {a} {o}. {n} gets {b} more, then gives away {c}. How many {o} does {n} have now?",
     "+-"),
    ("{n} had {a} {o} and lost {b}. Then {n} found {c} more. How many {o} does {n} have?", "-+"),
    ("{n} has {a} bags with {b} {o} in each. {n} gives away {c} {o}. How many {o} are left?",
     "*-"),
    ("{n} buys {a} {o} on Monday and {b} on Tuesday, then {c} more. How many {o} in total?",
     "++"),
]
MATH_HARD_FORMS = [
    ("{n} has {a} {o}. {n} gets {b} more, gives away {c}, then finds {d} more. How many {o} does "
     "{n} have now?", "+-+"),
    ("{n} had {a} {o} and lost {b}. Then {n} found {c} more and gave away {d}. How many {o} does "
     "{n} have?", "-+-"),
    ("{n} has {a} bags with {b} {o} in each. {n} gives away {c} {o} and then buys {d} more. How "
     "many {o} does {n} have?", "*-+"),
    ("{n} buys {a} {o} on Monday, {b} on Tuesday and {c} on Wednesday, then gives away {d}. How "
     "many {o} are left?", "++-"),
]


def _story(task: str, forms, rng: random.Random) -> tuple[str, Example]:
    form = rng.randrange(len(forms))
    text, ops = forms[form]
    while True:
        values = [rng.randint(2, 20)] + [rng.randint(1, 12) for _ in ops]
        if ops[0] == "*":
            values[1] = rng.randint(2, 5)
        steps, acc = [], values[0]
        for op, y in zip(ops, values[1:]):
            steps.append([acc, op, y, _apply(acc, op, y)])
            acc = steps[-1][3]
        if all(s[3] >= 0 for s in steps):
            break
    fill = dict(zip("abcd", values))
    prompt = text.format(n=rng.choice(NAMES), o=rng.choice(OBJECTS), **fill)
    worked = " ".join(f"{x}{op}{y}={r}." for x, op, y, r in steps)
    ex = Example(task, make_uid(task, prompt), prompt, str(acc),
                 f"{worked} The answer is {acc}.", {"steps": steps})
    return f"{form}|" + "|".join(map(str, values)), ex


def _gen_math(rng):
    return _story("math", MATH_FORMS, rng)


def _gen_math_hard(rng):
    return _story("math-hard", MATH_HARD_FORMS, rng)


def _stop_early(ex: Example, rng: random.Random) -> str:
    """The lazy solver: stops one step early and reports the intermediate value."""
    steps = ex.meta["steps"][:-1]
    worked = " ".join(f"{x}{op}{y}={r}." for x, op, y, r in steps)
    return f"{worked} The answer is {steps[-1][3]}."


# ---------------------------------------------------------------- code and code-hard
NUMERIC_OPS = sorted(op for op in CODE_OPS if op not in ("gt", "lt", "eq", "ne"))
SECOND_OPS = {"plus": "+", "minus": "-", "times": "*"}


def _code_example(task: str, rng: random.Random, second: bool) -> tuple[str, Example]:
    op = rng.choice(NUMERIC_OPS if second else sorted(CODE_OPS))
    k, f = rng.randint(1, K_MAX), rng.choice(FUNC_NAMES)
    words, expr, _ = CODE_OPS[op]
    words, expr = words.format(k=k), expr.format(k=k)
    key, rest = f"{op}|{k}", ""
    if second:  # "x plus 3, then times 2": code's phrasing, one more operation
        name = rng.choice(sorted(SECOND_OPS))
        k2 = rng.randint(2, 9)
        rest = f" {SECOND_OPS[name]} {k2}"
        words, expr = f"{words}, then {name} {k2}", f"({expr}){rest}"
        key += f"|{name}{k2}"
    prompt = rng.choice(CODE_FORMS).format(f=f, w=words)
    solution = f"def {f}(x):\n    return {expr}"
    ex = Example(task, make_uid(task, prompt), prompt, solution, solution,
                 {"tests": _code_tests(f, expr), "code_prefix": "", "entry_point": f, "op": op,
                  "k": k, "rest": rest})
    return key, ex


def _gen_code(rng):
    return _code_example("code", rng, second=False)


def _gen_code_hard(rng):
    return _code_example("code-hard", rng, second=True)


def _confused_operator(ex: Example, rng: random.Random) -> str:
    """The careless coder: the first operation's operator confused (code's own confusion)."""
    wrong = CODE_OPS[CODE_OPS[ex.meta["op"]][2]][1].format(k=ex.meta["k"])
    if ex.meta["rest"]:
        wrong = f"({wrong}){ex.meta['rest']}"
    return f"def {ex.meta['entry_point']}(x):\n    return {wrong}"


# ---------------------------------------------------------------- reasoning and reasoning-hard
def _distinct_words(rng: random.Random, ok) -> list[str]:
    while True:
        words = rng.sample(WORDS, 4)
        if ok(words):
            return words


def _vowels(w: str) -> int:
    return sum(c in "aeiou" for c in w)


def _choice_item(rng: random.Random, hard: bool) -> tuple[str, list[str], list[str], str, int,
                                                          int, str]:
    """(question, options, worked steps one per option, comparison label, correct index, lazy
    index, kind)."""
    kinds = (("closest", "second-largest", "most-vowels") if hard else
             ("largest", "smallest", "even", "odd", "starts", "longest"))
    kind = rng.choice(kinds)
    if kind in ("even", "odd", "starts"):
        if kind == "starts":
            options = _distinct_words(rng, lambda ws: len({w[0] for w in ws}) == 4)
            correct = rng.randrange(4)
            letter = options[correct][0]
            stated = [f"{w} {w[0]}, {'yes' if w[0] == letter else 'no'}" for w in options]
            return (f"Which word starts with the letter {letter}?", options, stated,
                    f"Starts with {letter}", correct, (correct + 3) % 4, kind)
        want = 0 if kind == "even" else 1
        others = rng.sample(range(1 - want, 100, 2), 3)
        correct = rng.randrange(4)
        nums = others[:correct] + [rng.randrange(50) * 2 + want] + others[correct:]
        stated = [f"{n} {'odd' if n % 2 else 'even'}, {'yes' if n % 2 == want else 'no'}"
                  for n in nums]
        return (f"Which number is {kind}?", [str(n) for n in nums], stated, kind.capitalize(),
                correct, (correct + 1) % 4, kind)
    if kind in ("largest", "smallest", "second-largest", "closest"):
        target = rng.randint(20, 80) if kind == "closest" else None
        while True:
            nums = rng.sample(range(1, 100), 4)
            if target is None:
                break
            gaps = [abs(n - target) for n in nums]
            if sorted(gaps)[0] < sorted(gaps)[1] and target not in nums:
                break
        options = [str(n) for n in nums]
        if kind == "closest":
            values, shown = gaps, [f"{n} off {g}" for n, g in zip(nums, gaps)]
        else:
            values, shown = nums, options
        question = (f"Which number is closest to {target}?" if kind == "closest" else
                    f"Which number is the {kind.replace('-', ' ')}?")
        label = {"largest": "Largest", "smallest": "Smallest", "second-largest": "Second largest",
                 "closest": f"Closest to {target}"}[kind]
    else:  # longest, most-vowels
        score = len if kind == "longest" else _vowels
        options = _distinct_words(
            rng, lambda ws: sorted(map(score, ws))[-1] > sorted(map(score, ws))[-2])
        values = [score(w) for w in options]
        shown = [f"{w} {v}" for w, v in zip(options, values)]
        question = ("Which word is the longest?" if kind == "longest" else
                    "Which word has the most vowels?")
        label = "Longest" if kind == "longest" else "Most vowels"
    stated, correct = _running_best(shown, values, lowest=kind in ("smallest", "closest"),
                                    top_two=kind == "second-largest")
    if kind == "second-largest":  # the shallow rule: the largest
        lazy = max(range(4), key=values.__getitem__)
    elif kind == "most-vowels":  # the shallow rule: the longest word
        lazy = max(range(4), key=lambda i: len(options[i]))
    else:  # the shallow rule: the opposite extreme
        lazy = (min if kind in ("largest", "longest") else max)(range(4), key=values.__getitem__)
    if lazy == correct:
        lazy = (correct + 1) % 4
    return question, options, stated, label, correct, lazy, kind


def _running_best(shown: list[str], values: list[int], lowest: bool,
                  top_two: bool) -> tuple[list[str], int]:
    """One step per option: its value, then the best so far (the top two for `top_two`), each
    decided from the option and the step before it. Returns (steps, index of the answer)."""
    steps, ranked = [], []  # ranked: indices, best first
    for i, text in enumerate(shown):
        ranked = sorted(ranked + [i], key=lambda j: values[j], reverse=not lowest)[:1 + top_two]
        kept = " ".join(f"{LETTERS[j]} {values[j]}" for j in ranked)
        steps.append(f"{text}, {'top' if top_two else 'best'} {kept}")
    return steps, ranked[-1]


def _choice(task: str, rng: random.Random, hard: bool) -> tuple[str, Example]:
    question, options, stated, label, correct, lazy, kind = _choice_item(rng, hard)
    prompt = _mc(question, options)
    body = " ".join(f"{LETTERS[i]}={v}." for i, v in enumerate(stated))
    letter = LETTERS[correct]
    ex = Example(task, make_uid(task, prompt), prompt, letter,
                 f"{body} {label}: {letter}. The answer is {letter}.",
                 {"choices": options, "body": body, "label": label, "lazy": lazy})
    return f"{kind}|{question}|{'|'.join(options)}", ex


def _gen_reasoning(rng):
    return _choice("reasoning", rng, hard=False)


def _gen_reasoning_hard(rng):
    return _choice("reasoning-hard", rng, hard=True)


def _shallow_choice(ex: Example, rng: random.Random) -> str:
    """Works every option right, then applies a shallow rule instead of the question's."""
    lazy = LETTERS[ex.meta["lazy"]]
    return f"{ex.meta['body']} {ex.meta['label']}: {lazy}. The answer is {lazy}."


def bare_answer(ex: Example) -> str:
    """The one-step form: the answer with no working (math and reasoning)."""
    return f"The answer is {ex.answer}."


HARD_DESCRIPTIONS = {
    "math-hard": [
        "Solve word problems that need three arithmetic steps and give the number.",
        "Longer grade-school word problems: three steps, one numeric answer.",
        "Work out how many objects someone has after several changes.",
        "Multi-step math stories with a numeric answer.",
        "Harder word problems: follow every change to the count."],
    "code-hard": [
        "Write a small Python function that applies two operations in turn.",
        "Implement the function of x that the sentence describes, in two steps.",
        "Python one-liners that combine two operations, checked by unit tests.",
        "Turn a two-step English description of a function into Python code.",
        "Harder coding: functions whose result needs two operations."],
    "reasoning-hard": [
        "Harder multiple-choice questions: closest values, second largest, most vowels.",
        "Choose the option that answers a comparison needing one more step.",
        "Multiple choice reasoning about numbers and words, challenge level.",
        "Pick the correct option among four when the comparison is subtle.",
        "Challenge-level choice questions with one right answer."],
}


def core_tasks_v2() -> list[Task]:
    from t2ray.tasks.core import core_tasks

    v1 = {t.name: t for t in core_tasks()}  # the seen families keep their v1 descriptions
    spec = {"math": (_gen_math, _stop_early), "math-hard": (_gen_math_hard, _stop_early),
            "code": (_gen_code, _confused_operator), "code-hard": (_gen_code_hard,
                                                                   _confused_operator),
            "reasoning": (_gen_reasoning, _shallow_choice),
            "reasoning-hard": (_gen_reasoning_hard, _shallow_choice)}
    # code's content space (13 operations x K_MAX constants) holds about 2,300 train contents
    sizes = {name: {"train": 2000 if name == "code" else 4000, "validation": 500, "test": 1000}
             for name in spec}
    sizes["code"].update(validation=250, test=500)
    return [Task(name=name, family=v1[name].family, kind=v1[name].kind,
                 descriptions=list(HARD_DESCRIPTIONS.get(name, v1[name].descriptions)),
                 generate=gen, split_sizes=sizes[name], seen=v1[name].seen,
                 group="core", distractor=distractor, distinct_keys=True)
            for name, (gen, distractor) in spec.items()]
