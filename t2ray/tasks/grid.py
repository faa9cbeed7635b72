"""Instruction families v2: the cells of an operation x argument grid (the Text-to-LoRA line).

Each family applies one string operation (`OPS`: reverse, uppercase, ...) to one argument of its
input (`ARGS`: a word, each word of a list, the first / last / second / longest word of a list),
so a held-out cell shares its operation with the seen cells of its row and its argument with the
seen cells of its column: a description-to-adapter map can compose them. `HELD_OUT` holds 12
cells, at most two per row and two per column, so each has at least 4 seen cells in its row and
8 in its column.

- **Descriptions** are built compositionally from the operation's and the argument's phrasings
  in several sentence shapes (numbers both as words and as digits); each family gets
  `N_DESCRIPTIONS` of them, drawn with a seed. A seen family's last `N_PROBES` descriptions are
  held back from training (`Task.probe_descriptions`) as paraphrase probes; a held-out family's
  descriptions are for evaluation only.
- **Tags**: every family has an opaque tag (`T07`, from a seeded permutation, saying nothing of
  the task). Pretraining shows every family, held-out cells included, as tag + input -> output
  pairs and never with a description, so the base holds each skill behind its tag: latent, and
  unreachable from a description until something maps the description to it.
- **No easy outs**: every output depends on the input (no constant answer scores), and the
  longest word of a list is unique (no ties the description does not resolve).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from t2ray.tasks.base import Example, Task, make_uid, stable_seed

VOWELS = "aeiou"
CONSONANTS = "bcdfghklmnprstvz"
N_DESCRIPTIONS = 36
N_PROBES = 3


def _word(rng: random.Random, lo: int = 3, hi: int = 6) -> str:
    """A pronounceable pseudo-word (alternating consonants and vowels): every word has a
    consonant and a vowel, and the space is large (about 10^6 words)."""
    n, start = rng.randint(lo, hi), rng.randrange(2)
    return "".join(rng.choice(VOWELS if (i + start) % 2 else CONSONANTS) for i in range(n))


def _word_list(rng: random.Random) -> list[str]:
    """3-4 words with a unique longest one."""
    while True:
        words = [_word(rng) for _ in range(rng.randint(3, 4))]
        lengths = sorted(map(len, words))
        if lengths[-1] > lengths[-2]:
            return words


def _next_letter(w: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)


@dataclass(frozen=True)
class Op:
    fn: Callable[[str], str]
    phrases: tuple[str, ...]  # verb phrases with {x} for the argument


@dataclass(frozen=True)
class Arg:
    kind: str  # "word" (the input is one word) or "list" (the input is a word list)
    pick: Callable[[list[str]], list[str]]  # the words the operation applies to
    phrases: tuple[str, ...]  # noun phrases filling {x}


OPS: dict[str, Op] = {
    "reverse": Op(lambda w: w[::-1], (
        "reverse the letters of {x}", "write {x} backwards", "spell {x} from the last letter to "
        "the first", "mirror {x}", "flip the letter order of {x}")),
    "upper": Op(str.upper, (
        "write {x} in capital letters", "convert {x} to uppercase", "capitalise every letter of "
        "{x}", "turn {x} into upper case", "make {x} all caps")),
    "double": Op(lambda w: "".join(c * 2 for c in w), (
        "double every letter of {x}", "write each letter of {x} twice", "repeat each letter of "
        "{x} two times", "repeat every character of {x} 2 times in place",
        "stutter each letter of {x} once")),
    "first-two": Op(lambda w: w[:2], (
        "keep the first two letters of {x}", "keep the first 2 letters of {x}",
        "take the opening two characters of {x}", "give the 2-letter prefix of {x}",
        "cut {x} down to its first two letters")),
    "last-two": Op(lambda w: w[-2:], (
        "keep the last two letters of {x}", "keep the final 2 letters of {x}",
        "take the closing two characters of {x}", "give the 2-letter ending of {x}",
        "cut {x} down to its last two letters")),
    "drop-vowels": Op(lambda w: "".join(c for c in w if c not in VOWELS), (
        "remove the vowels from {x}", "delete every vowel in {x}", "keep only the consonants "
        "of {x}", "strip a, e, i, o and u out of {x}", "write {x} without its vowels")),
    "sort-letters": Op(lambda w: "".join(sorted(w)), (
        "sort the letters of {x} alphabetically", "alphabetise the letters of {x}",
        "put the letters of {x} in a-to-z order", "rearrange the letters of {x} from a to z",
        "order the characters of {x} alphabetically")),
    "next-letter": Op(_next_letter, (
        "shift every letter of {x} one step forward in the alphabet",
        "replace each letter of {x} with the letter after it", "advance each letter of {x} by 1",
        "move every letter of {x} one place later in the alphabet (z becomes a)",
        "swap each letter of {x} for its successor in the alphabet")),
    "dashes": Op(lambda w: "-".join(w), (
        "spell {x} with dashes between the letters", "put a dash between the letters of {x}",
        "join the letters of {x} with -", "separate the letters of {x} by hyphens",
        "write {x} letter by letter, joined by dashes")),
    "swap-ends": Op(lambda w: w[-1] + w[1:-1] + w[0], (
        "swap the first and last letters of {x}", "exchange the first and the last letter of "
        "{x}", "trade the first letter of {x} with its last one", "switch the outer two "
        "letters of {x}", "put the last letter of {x} first and its first letter last")),
}

ARGS: dict[str, Arg] = {
    "word": Arg("word", lambda ws: ws, (
        "the word", "the given word", "the input word", "this word", "the single word")),
    "each": Arg("list", lambda ws: ws, (
        "each word in the list", "every word of the list", "all the words, one by one",
        "each of the words", "every word given")),
    "first": Arg("list", lambda ws: ws[:1], (
        "the first word of the list", "the 1st word", "the opening word of the list",
        "the word that comes first", "only the first word")),
    "second": Arg("list", lambda ws: ws[1:2], (
        "the second word of the list", "the 2nd word", "word number two of the list",
        "the word right after the first", "only the second word")),
    "last": Arg("list", lambda ws: ws[-1:], (
        "the last word of the list", "the final word", "the closing word of the list",
        "the word that comes last", "only the last word")),
    "longest": Arg("list", lambda ws: [max(ws, key=len)], (
        "the longest word of the list", "the word with the most letters",
        "the lengthiest word", "the biggest word by length", "only the longest word")),
}

# 12 held-out cells: at most two per row (operation) and two per column (argument)
HELD_OUT = {
    ("reverse", "word"), ("dashes", "word"), ("upper", "each"), ("swap-ends", "each"),
    ("double", "first"), ("sort-letters", "first"), ("drop-vowels", "last"),
    ("next-letter", "last"), ("first-two", "longest"), ("reverse", "longest"),
    ("last-two", "second"), ("upper", "second"),
}

SHAPES = ("{Y}.", "Please {y}.", "Your task: {y}.", "{Y}, and output only the result.",
          "Given the input, {y}.", "Output what you get when you {y}.",
          "Read the input and {y}.", "Instruction: {y}.")


def cell_name(op: str, arg: str) -> str:
    return f"{op}-{arg}"


def cells() -> list[tuple[str, str]]:
    return [(op, arg) for op in OPS for arg in ARGS]


def tags() -> dict[tuple[str, str], str]:
    """An opaque tag per cell, from a seeded permutation: the tag says nothing of the task."""
    order = cells()
    numbers = list(range(10, 10 + len(order)))
    random.Random(stable_seed("grid-tags")).shuffle(numbers)
    return {c: f"T{n}" for c, n in zip(order, numbers)}


def descriptions(op: str, arg: str, n: int = N_DESCRIPTIONS) -> list[str]:
    """`n` distinct descriptions of a cell: operation phrase x argument phrase x sentence
    shape, drawn with a seed per cell (the last `N_PROBES` are a seen cell's probes)."""
    combos = [(o, a, s) for o in OPS[op].phrases for a in ARGS[arg].phrases for s in SHAPES]
    random.Random(stable_seed("grid-descriptions", op, arg)).shuffle(combos)
    out: list[str] = []
    for o, a, shape in combos:
        y = o.format(x=a)
        text = shape.format(y=y, Y=y[0].upper() + y[1:])
        if text not in out:
            out.append(text)
        if len(out) == n:
            return out
    raise ValueError(f"cell {op} x {arg} has only {len(out)} distinct descriptions")


def answer(op: str, arg: str, words: list[str]) -> str:
    return " ".join(OPS[op].fn(w) for w in ARGS[arg].pick(words))


def _make_generate(name: str, op: str, arg: str):
    def generate(rng: random.Random) -> tuple[str, Example]:
        words = [_word(rng)] if ARGS[arg].kind == "word" else _word_list(rng)
        x = " ".join(words)
        y = answer(op, arg, words)
        ex = Example(name, make_uid(name, x), f"Input: {x}", y, y,
                     {"input": x, "op": op, "arg": arg})
        return x, ex

    return generate


def grid_tasks() -> list[Task]:
    tag = tags()
    tasks = []
    for op, arg in cells():
        name, seen = cell_name(op, arg), (op, arg) not in HELD_OUT
        descs = descriptions(op, arg)
        tasks.append(Task(
            name=name, family="instruct", kind="exact",
            descriptions=descs[:-N_PROBES] if seen else descs,
            probe_descriptions=descs[-N_PROBES:] if seen else [],
            generate=_make_generate(name, op, arg),
            split_sizes={"train": 1000, "validation": 100, "test": 200},
            seen=seen, group="instruct", tag=tag[(op, arg)], cell=(op, arg),
            distinct_keys=True))
    return tasks
