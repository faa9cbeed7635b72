"""The six core task families: seen `math`, `code`, `reasoning` (stand-ins for GSM8K, MBPP and
ARC-Easy) and unseen `math-hard`, `code-hard`, `reasoning-hard` (stand-ins for MATH, HumanEval and
ARC-Challenge).

The unseen families *combine* sub-skills of the seen ones, as the paper's unseen tasks drew on
several experts: `math-hard` is arithmetic written as a program trace (math + code), `code-hard`
is a HumanEval-style body completion of a two-operation function (code + math), and
`reasoning-hard` is multiple choice over arithmetic expressions (reasoning + math).

Every generator returns (content_key, Example). The content key is the underlying content (the
number tuple and the question form), so a test item's content never occurs in training.
"""

from __future__ import annotations

import random

from t2ray.tasks.base import Example, Task, make_uid

NAMES = ["Ann", "Ben", "Cat", "Dan", "Eva", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Leo",
         "Max", "Ned", "Ola", "Pam", "Ray", "Sue", "Tom", "Una"]
OBJECTS = ["apples", "books", "coins", "eggs", "pens", "cards", "shells", "stamps", "cups",
           "toys", "rocks", "nuts"]
LETTERS = "ABCD"


# ---------------------------------------------------------------- math (GSM8K-like)
# (question template, first op, second op); the solution is a two-step calculation.
MATH_FORMS = [
    ("{n} has {a} {o}. {n} gets {b} more, then gives away {c}. How many {o} does {n} have now?",
     "+", "-"),
    ("{n} had {a} {o} and lost {b}. Then {n} found {c} more. How many {o} does {n} have?",
     "-", "+"),
    ("{n} has {a} bags with {b} {o} in each. {n} gives away {c} {o}. How many {o} are left?",
     "*", "-"),
    ("{n} buys {a} {o} on Monday and {b} on Tuesday, then {c} more. How many {o} in total?",
     "+", "+"),
]


def _apply(x: int, op: str, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y}[op]


def _gen_math(rng: random.Random) -> tuple[str, Example]:
    form = rng.randrange(len(MATH_FORMS))
    text, op1, op2 = MATH_FORMS[form]
    while True:
        a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)
        if op1 == "*":
            b = rng.randint(2, 5)
        s = _apply(a, op1, b)
        r = _apply(s, op2, c)
        if s >= 0 and r >= 0:
            break
    prompt = text.format(n=rng.choice(NAMES), o=rng.choice(OBJECTS), a=a, b=b, c=c)
    solution = f"{a}{op1}{b}={s}. {s}{op2}{c}={r}. The answer is {r}."
    ex = Example("math", make_uid("math", prompt), prompt, str(r), solution,
                 {"steps": [[a, op1, b, s], [s, op2, c, r]]})
    return f"{form}|{a}|{b}|{c}", ex


def _math_distractor(ex: Example, rng: random.Random) -> str:
    """The lazy solver: stops after the first step."""
    a, op, b, s = ex.meta["steps"][0]
    return f"{a}{op}{b}={s}. The answer is {s}."


# ---------------------------------------------------------------- math-hard (MATH-like)
def _gen_math_hard(rng: random.Random) -> tuple[str, Example]:
    """Two updates of x written as code; small operands keep every step within the model's
    one-step arithmetic, so the difficulty is the composition and the unfamiliar form."""
    x = rng.randint(1, 20)
    lines, steps, key = [f"x = {x}"], [], [str(x)]
    for _ in range(2):
        op = rng.choice("+-*")
        y = rng.randint(2, 3) if op == "*" else rng.randint(1, 9)
        if op == "-" and x - y < 0:
            op = "+"
        nx = _apply(x, op, y)
        lines.append(f"x = x {op} {y}")
        steps.append([x, op, y, nx])
        key.append(f"{op}{y}")
        x = nx
    prompt = "After this code runs, what is x?\n" + "\n".join(lines)
    trace = " ".join(f"x={a}{op}{b}={r}." for a, op, b, r in steps)
    solution = f"{trace} The answer is {x}."
    ex = Example("math-hard", make_uid("math-hard", prompt), prompt, str(x), solution,
                 {"steps": steps})
    return "|".join(key), ex


def _math_hard_distractor(ex: Example, rng: random.Random) -> str:
    """Stops one step early and reports the intermediate value."""
    steps = ex.meta["steps"][:-1]
    trace = " ".join(f"x={a}{op}{b}={r}." for a, op, b, r in steps)
    return f"{trace} The answer is {steps[-1][3]}."


# ---------------------------------------------------------------- code (MBPP-like)
# (words, python expression, the op a careless coder confuses it with)
CODE_OPS = {
    "plus": ("x plus {k}", "x + {k}", "minus"),
    "minus": ("x minus {k}", "x - {k}", "plus"),
    "times": ("x times {k}", "x * {k}", "plus"),
    "floordiv": ("x divided by {k}, rounded down", "x // {k}", "mod"),
    "mod": ("the remainder of x divided by {k}", "x % {k}", "floordiv"),
    "rsub": ("{k} minus x", "{k} - x", "minus"),
    "square_plus": ("x squared plus {k}", "x * x + {k}", "times"),
    "gt": ("True if x is greater than {k}", "x > {k}", "lt"),
    "lt": ("True if x is less than {k}", "x < {k}", "gt"),
    "eq": ("True if x equals {k}", "x == {k}", "ne"),
    "ne": ("True if x is not equal to {k}", "x != {k}", "eq"),
    "max": ("the larger of x and {k}", "max(x, {k})", "min"),
    "min": ("the smaller of x and {k}", "min(x, {k})", "max"),
}
FUNC_NAMES = ["f", "g", "h", "calc", "compute", "solve", "apply", "value", "step", "change",
              "update", "shift", "scale", "check", "test", "rule", "op", "fn", "mapx", "get"]
CODE_FORMS = ["Write a function {f}(x) that returns {w}.", "Define {f}(x) to return {w}."]
CODE_INPUTS = [0, 1, 5, 12, 30]


def _code_tests(f: str, expr: str) -> str:
    lines = []
    for x in CODE_INPUTS:
        expected = eval(expr, {}, {"x": x})  # our own fixed expression, never model output
        lines.append(f"assert {f}({x}) == {expected!r}")
    return "\n".join(lines)


def _gen_code(rng: random.Random) -> tuple[str, Example]:
    op = rng.choice(sorted(CODE_OPS))
    k = rng.randint(1, 20)
    f = rng.choice(FUNC_NAMES)
    words, expr, _ = CODE_OPS[op]
    expr = expr.format(k=k)
    prompt = rng.choice(CODE_FORMS).format(f=f, w=words.format(k=k))
    solution = f"def {f}(x):\n    return {expr}"
    ex = Example("code", make_uid("code", prompt), prompt, solution, solution,
                 {"tests": _code_tests(f, expr), "code_prefix": "", "entry_point": f,
                  "op": op, "k": k})
    return f"{op}|{k}", ex


def _code_distractor(ex: Example, rng: random.Random) -> str:
    """The careless coder: the right shape with a confused operator."""
    wrong = CODE_OPS[CODE_OPS[ex.meta["op"]][2]][1].format(k=ex.meta["k"])
    return f"def {ex.meta['entry_point']}(x):\n    return {wrong}"


# ---------------------------------------------------------------- code-hard (HumanEval-like)
HARD_CODE_OPS = {"+": "plus", "-": "minus", "*": "times"}
# The `code` operations with a numeric result (a comparison, then arithmetic, reads oddly).
HARD_FIRST_OPS = sorted(op for op in CODE_OPS if op not in ("gt", "lt", "eq", "ne"))


def _gen_code_hard(rng: random.Random) -> tuple[str, Example]:
    """Body completion of a two-operation function: the first operation is phrased as in `code`
    (so the code family's operator mapping is needed), the second one is arithmetic."""
    f = rng.choice(FUNC_NAMES)
    op = rng.choice(HARD_FIRST_OPS)
    k1, o2, k2 = rng.randint(1, 20), rng.choice("+-*"), rng.randint(1, 20)
    words, expr, _ = CODE_OPS[op]
    doc = f"Return {words.format(k=k1)}, then {HARD_CODE_OPS[o2]} {k2}."
    body = f"({expr.format(k=k1)}) {o2} {k2}"
    prefix = f'def {f}(x):\n    """{doc}"""\n'
    tests = "\n".join(f"assert {f}({x!r}) == {eval(body, {}, {'x': x})!r}" for x in CODE_INPUTS)
    solution = f"    return {body}"
    ex = Example("code-hard", make_uid("code-hard", prefix), "Complete the function:\n" + prefix,
                 solution, solution,
                 {"tests": tests, "code_prefix": prefix, "entry_point": f, "op": op, "k": k1,
                  "second": f" {o2} {k2}"})
    return f"{op}|{k1}|{o2}{k2}", ex


def _code_hard_distractor(ex: Example, rng: random.Random) -> str:
    """The careless coder of `code`: the first operation's operator confused."""
    wrong = CODE_OPS[CODE_OPS[ex.meta["op"]][2]][1].format(k=ex.meta["k"])
    return f"    return ({wrong}){ex.meta['second']}"


# ---------------------------------------------------------------- reasoning (ARC-Easy-like)
WORDS = ["ant", "bee", "cow", "dog", "elk", "fox", "gnu", "hen", "owl", "pig", "rat", "yak",
         "bird", "crab", "deer", "duck", "frog", "goat", "hawk", "lion", "mole", "moth", "seal",
         "swan", "wolf", "camel", "eagle", "horse", "koala", "llama", "mouse", "otter", "panda",
         "sheep", "snake", "tiger", "zebra", "badger", "beaver", "donkey", "falcon", "monkey",
         "rabbit", "turtle", "walrus"]


def _mc(prompt_head: str, options: list[str]) -> str:
    return prompt_head + "\n" + "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))


def _reasoning_question(rng: random.Random) -> tuple[str, list[str], int, int, str]:
    """(question, options, correct index, distractor index, key) for one ARC-like item."""
    kind = rng.choice(["largest", "smallest", "even", "odd", "starts", "longest"])
    if kind in ("largest", "smallest"):
        nums = rng.sample(range(1, 100), 4)
        hi, lo = nums.index(max(nums)), nums.index(min(nums))
        correct, lazy = (hi, lo) if kind == "largest" else (lo, hi)
        return f"Which number is the {kind}?", [str(n) for n in nums], correct, lazy, kind
    if kind in ("even", "odd"):
        want = 0 if kind == "even" else 1
        odd_one = rng.randrange(50) * 2 + want
        others = [rng.randrange(50) * 2 + 1 - want for _ in range(3)]
        if len(set(others)) < 3:
            others = rng.sample(range(1 - want, 100, 2), 3)
        correct = rng.randrange(4)
        nums = others[:correct] + [odd_one] + others[correct:]
        return f"Which number is {kind}?", [str(n) for n in nums], correct, (correct + 1) % 4, kind
    if kind == "starts":
        words = rng.sample(WORDS, 4)
        while len({w[0] for w in words}) < 4:
            words = rng.sample(WORDS, 4)
        correct = rng.randrange(4)
        return (f"Which word starts with the letter {words[correct][0]}?", words, correct,
                (correct + 3) % 4, kind)
    words = rng.sample(WORDS, 4)
    while sorted(len(w) for w in words)[-1] == sorted(len(w) for w in words)[-2]:
        words = rng.sample(WORDS, 4)
    lengths = [len(w) for w in words]
    return ("Which word is the longest?", words, lengths.index(max(lengths)),
            lengths.index(min(lengths)), kind)


def _gen_reasoning(rng: random.Random) -> tuple[str, Example]:
    question, options, correct, lazy, kind = _reasoning_question(rng)
    prompt = _mc(question, options)
    ex = Example("reasoning", make_uid("reasoning", prompt), prompt, LETTERS[correct],
                 f"{options[correct]}. The answer is {LETTERS[correct]}.",
                 {"choices": options, "lazy": lazy})
    return f"{kind}|{question}|{'|'.join(options)}", ex


def _choice_distractor(ex: Example, rng: random.Random) -> str:
    """Applies a shallow rule (the opposite order, the first big operand...) instead of the question."""
    lazy = ex.meta["lazy"]
    return f"{ex.meta['choices'][lazy]}. The answer is {LETTERS[lazy]}."


# ---------------------------------------------------------------- reasoning-hard (ARC-C-like)
def _gen_reasoning_hard(rng: random.Random) -> tuple[str, Example]:
    want = rng.choice(["largest", "smallest"])
    while True:
        exprs = []
        for _ in range(4):
            op = rng.choice("+-")
            a, b = rng.randint(2, 9), rng.randint(1, 9)
            if op == "-" and b > a:
                a, b = b, a
            exprs.append((a, op, b, _apply(a, op, b)))
        values = [e[3] for e in exprs]
        firsts = [e[0] for e in exprs]
        target = max(values) if want == "largest" else min(values)
        shallow = max(firsts) if want == "largest" else min(firsts)
        if (values.count(target) == 1 and firsts.count(shallow) == 1
                and values.index(target) != firsts.index(shallow)):
            break
    correct = values.index(target)
    options = [f"{a}{op}{b}" for a, op, b, _ in exprs]
    prompt = _mc(f"Which expression has the {want} value?", options)
    evals = " ".join(f"{LETTERS[i]}={v}." for i, v in enumerate(values))
    ex = Example("reasoning-hard", make_uid("reasoning-hard", prompt), prompt, LETTERS[correct],
                 f"{evals} The answer is {LETTERS[correct]}.",
                 {"choices": options, "values": values, "lazy": firsts.index(shallow)})
    return f"{want}|{'|'.join(options)}", ex


def _reasoning_hard_distractor(ex: Example, rng: random.Random) -> str:
    """Judges by the first operand instead of the value."""
    lazy = ex.meta["lazy"]
    evals = " ".join(f"{LETTERS[i]}={v}." for i, v in enumerate(ex.meta["values"]))
    return f"{evals} The answer is {LETTERS[lazy]}."


def core_tasks() -> list[Task]:
    sizes = {"train": 4000, "validation": 500, "test": 1000}
    spec = [
        ("math", "math", "numeric", True, _gen_math, _math_distractor, [
            "Solve short arithmetic word problems and give the number.",
            "Grade-school math: read the story, compute step by step, state the answer.",
            "Answer word problems that need two arithmetic steps.",
            "Work out how many objects someone has after buying and giving some away.",
            "Elementary math word problems with a numeric answer.",
        ]),
        ("code", "code", "code", True, _gen_code, _code_distractor, [
            "Write a small Python function from a one-line specification.",
            "Python programming: implement the function that the sentence describes.",
            "Turn an English description of a function of x into Python code.",
            "Basic Python coding problems checked by unit tests.",
            "Implement simple one-line Python functions.",
        ]),
        ("reasoning", "reasoning", "choice", True, _gen_reasoning, _choice_distractor, [
            "Answer multiple-choice questions by picking the letter A, B, C or D.",
            "Choose the option that answers a simple comparison question.",
            "Multiple choice reasoning about numbers and words.",
            "Pick the correct option among four.",
            "Easy multiple-choice questions with one right answer.",
        ]),
        ("math-hard", "math", "numeric", False, _gen_math_hard, _math_hard_distractor, [
            "Trace a short program and report the final value of a variable.",
            "Compute the result of several arithmetic updates to x.",
            "Multi-step arithmetic written as code.",
            "Follow assignments line by line and give the final number.",
            "Harder math: chains of operations on a variable.",
        ]),
        ("code-hard", "code", "code", False, _gen_code_hard, _code_hard_distractor, [
            "Complete the body of a Python function from its docstring.",
            "Implement a function whose docstring describes two operations.",
            "HumanEval-style function completion checked by unit tests.",
            "Write the return statement that the docstring asks for.",
            "Harder coding: fill in a Python function body.",
        ]),
        ("reasoning-hard", "reasoning", "choice", False, _gen_reasoning_hard,
         _reasoning_hard_distractor, [
            "Multiple choice over arithmetic expressions: pick the one with the asked value.",
            "Evaluate four expressions and choose the largest or smallest.",
            "Harder multiple-choice questions that need calculation.",
            "Compare the values of expressions and answer with a letter.",
            "Challenge-level choice questions mixing arithmetic and comparison.",
        ]),
    ]
    return [
        Task(name=name, family=family, kind=kind, descriptions=descs, generate=gen,
             split_sizes=dict(sizes), seen=seen, group="core", distractor=distractor)
        for name, family, kind, seen, gen, distractor, descs in spec
    ]
