"""Small instruction task families for Text-to-LoRA (a Super-NaturalInstructions stand-in).

Each family is a deterministic transform of a generated input (a word, a word list or a number
list), with five paraphrased natural-language descriptions. The content key is the input itself,
so the splits share no input. A fixed set of families is held out (`seen=False`) for unseen-task
evaluation; their descriptions are never used in training.
"""

from __future__ import annotations

import random
from typing import Callable

from t2ray.tasks.base import Example, Task, make_uid

VOWELS = set("aeiou")
CONSONANTS = "bcdfghklmnprstvz"


def _word(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    """A pronounceable pseudo-word (alternating consonants and vowels): a large input space."""
    n = rng.randint(lo, hi)
    start = rng.randrange(2)
    return "".join(rng.choice("aeiou" if (i + start) % 2 else CONSONANTS) for i in range(n))


def _word_list(rng: random.Random) -> list[str]:
    return [_word(rng, 3, 5) for _ in range(rng.randint(3, 4))]


def _num_list(rng: random.Random) -> list[int]:
    return [rng.randint(0, 20) for _ in range(rng.randint(3, 5))]


def _number(rng: random.Random) -> int:
    return rng.randint(0, 999)


def _fmt_list(xs: list) -> str:
    return " ".join(map(str, xs))


# Input kinds: (sampler, formatter).
INPUTS: dict[str, tuple[Callable[[random.Random], object], Callable[[object], str]]] = {
    "word": (_word, str),
    "words": (_word_list, _fmt_list),
    "nums": (_num_list, _fmt_list),
    "number": (_number, str),
}

Transform = Callable[[object], object]
# A family spec: (name, input kind, transform, five description templates). `{k}` in a name or
# description is filled from the family's parameter.
FamilySpec = tuple[str, str, Transform, list[str]]


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _param_families() -> list[FamilySpec]:
    fams: list[FamilySpec] = []
    for k in (1, 2, 3):
        fams += [
            (f"first-{k}-letters", "word", lambda w, k=k: w[:k], [
                f"Write the first {k} letters of the word.",
                f"Output the word's first {k} characters.",
                f"Keep only the first {k} letters.",
                f"Give the prefix of length {k}.",
                f"Copy the beginning of the word, {k} letters long."]),
            (f"last-{k}-letters", "word", lambda w, k=k: w[-k:], [
                f"Write the last {k} letters of the word.",
                f"Output the word's final {k} characters.",
                f"Keep only the last {k} letters.",
                f"Give the suffix of length {k}.",
                f"Copy the end of the word, {k} letters long."]),
        ]
    for k in (1, 2, 3, 5, 10):
        fams += [
            (f"add-{k}-each", "nums", lambda xs, k=k: _fmt_list([x + k for x in xs]), [
                f"Add {k} to every number in the list.",
                f"Increase each number by {k}.",
                f"Return the list with {k} added to each element.",
                f"Shift all numbers up by {k}.",
                f"For each number, output the number plus {k}."]),
            (f"greater-than-{k}", "number", lambda n, k=k: _yes(n > k * 90), [
                f"Say yes if the number is greater than {k * 90}, otherwise no.",
                f"Is the number above {k * 90}? Answer yes or no.",
                f"Answer yes when the value exceeds {k * 90} and no otherwise.",
                f"Check whether the number is bigger than {k * 90}.",
                f"Reply yes or no: is it more than {k * 90}?"]),
        ]
    for k in (2, 3):
        fams += [
            (f"times-{k}-each", "nums", lambda xs, k=k: _fmt_list([x * k for x in xs]), [
                f"Multiply every number in the list by {k}.",
                f"Scale each number by a factor of {k}.",
                f"Return the list with each element times {k}.",
                f"For each number, output {k} times the number.",
                f"Multiply all the values by {k}."]),
            (f"repeat-{k}", "word", lambda w, k=k: w * k, [
                f"Write the word {k} times with no spaces.",
                f"Repeat the word {k} times, joined together.",
                f"Output the word concatenated {k} times.",
                f"Say the word {k} times in a row without separators.",
                f"Copy the word {k} times back to back."]),
            (f"divisible-by-{k}", "number", lambda n, k=k: _yes(n % k == 0), [
                f"Say yes if the number is divisible by {k}, otherwise no.",
                f"Is the number a multiple of {k}? Answer yes or no.",
                f"Answer yes when {k} divides the number evenly.",
                f"Check whether the number divides by {k} with no remainder.",
                f"Reply yes or no: is it a multiple of {k}?"]),
            (f"first-{k}-items", "nums", lambda xs, k=k: _fmt_list(xs[:k]), [
                f"Keep the first {k} numbers of the list.",
                f"Output only the first {k} elements.",
                f"Return the list's first {k} items.",
                f"Truncate the list to its first {k} numbers.",
                f"Give the leading {k} numbers."]),
        ]
    for letter in "aeo":
        fams += [
            (f"contains-{letter}", "word", lambda w, c=letter: _yes(c in w), [
                f"Say yes if the word contains the letter {letter}, otherwise no.",
                f"Does the word have an {letter} in it? Answer yes or no.",
                f"Answer yes when the letter {letter} appears in the word.",
                f"Check whether {letter} occurs in the word.",
                f"Reply yes or no: is there an {letter} in the word?"]),
            (f"count-{letter}", "word", lambda w, c=letter: str(w.count(c)), [
                f"Count how many times the letter {letter} appears in the word.",
                f"How many {letter} letters are in the word?",
                f"Output the number of occurrences of {letter}.",
                f"Give the count of the letter {letter}.",
                f"Tally the letter {letter} in the word."]),
            (f"words-with-{letter}", "words", lambda ws, c=letter: _fmt_list(
                [w for w in ws if c in w]) or "none", [
                f"Keep only the words that contain the letter {letter}.",
                f"List the words with an {letter} in them, or none.",
                f"Filter the list to words containing {letter}.",
                f"Output the words that include the letter {letter}.",
                f"Which words have an {letter}? Write them, or none."]),
        ]
    for sep, sep_name in (("-", "dashes"), (",", "commas"), ("+", "plus signs")):
        fams += [
            (f"join-{sep_name.replace(' ', '-')}", "words", lambda ws, s=sep: s.join(ws), [
                f"Join the words with {sep_name}.",
                f"Write the words separated by {sep_name} instead of spaces.",
                f"Replace the spaces between the words with {sep_name}.",
                f"Connect all the words using {sep_name}.",
                f"Output the words glued together by {sep_name}."]),
            (f"spell-{sep_name.replace(' ', '-')}", "word", lambda w, s=sep: s.join(w), [
                f"Spell the word with {sep_name} between the letters.",
                f"Write each letter of the word separated by {sep_name}.",
                f"Put {sep_name} between all letters of the word.",
                f"Split the word into letters joined by {sep_name}.",
                f"Output the word's letters with {sep_name} in between."]),
        ]
    for affix in ("re", "un", "pre"):
        fams.append((f"prefix-{affix}", "word", lambda w, a=affix: a + w, [
            f"Put {affix} in front of the word.", f"Add the prefix {affix} to the word.",
            f"Write {affix} followed by the word.", f"Prepend {affix} to the word.",
            f"Start the word with {affix}."]))
    for affix in ("ing", "ed", "ly"):
        fams.append((f"suffix-{affix}", "word", lambda w, a=affix: w + a, [
            f"Put {affix} at the end of the word.", f"Add the suffix {affix} to the word.",
            f"Write the word followed by {affix}.", f"Append {affix} to the word.",
            f"End the word with {affix}."]))
    for a, b in (("a", "o"), ("e", "i"), ("o", "u")):
        fams.append((f"replace-{a}-{b}", "word", lambda w, a=a, b=b: w.replace(a, b), [
            f"Replace every {a} in the word with {b}.", f"Change each letter {a} to {b}.",
            f"Swap the letter {a} for {b} everywhere.", f"Write the word with {b} instead of {a}.",
            f"Turn all {a} letters into {b}."]))
    for left, right, bname in (("(", ")", "parentheses"), ("[", "]", "square brackets"),
                               ("<", ">", "angle brackets")):
        fams.append((f"wrap-{bname.split()[0]}", "word", lambda w, lb=left, rb=right: lb + w + rb, [
            f"Wrap the word in {bname}.", f"Put the word between {bname}.",
            f"Enclose the word in {bname}.", f"Surround the word with {bname}.",
            f"Write the word inside {bname}."]))
    for k in (5, 10):
        fams.append((f"count-above-{k}", "nums", lambda xs, k=k: str(sum(x > k for x in xs)), [
            f"Count the numbers greater than {k}.", f"How many values exceed {k}?",
            f"Output how many numbers are above {k}.", f"Tally the numbers bigger than {k}.",
            f"Give the count of values over {k}."]))
    for k in (2, 3):
        fams.append((f"letter-{k}", "word", lambda w, k=k: w[k - 1], [
            f"Write letter number {k} of the word.", f"What is the word's character {k}?",
            f"Output the letter in position {k}.", f"Give the {k}. letter of the word.",
            f"Name the letter at place {k}."]))
    for k in (1, 2):
        fams.append((f"subtract-{k}-each", "nums", lambda xs, k=k: _fmt_list([x - k for x in xs]), [
            f"Subtract {k} from every number in the list.", f"Decrease each number by {k}.",
            f"Return the list with {k} taken from each element.", f"Shift all numbers down by {k}.",
            f"For each number, output the number minus {k}."]))
    return fams


def _plain_families() -> list[FamilySpec]:
    s = sorted
    return [
        ("reverse-word", "word", lambda w: w[::-1], [
            "Reverse the letters of the word.", "Write the word backwards.",
            "Output the word spelled from the last letter to the first.",
            "Mirror the word.", "Give the word in reverse order."]),
        ("uppercase-word", "word", str.upper, [
            "Write the word in capital letters.", "Convert the word to uppercase.",
            "Output the word with every letter capitalised.", "Make the word all caps.",
            "Shout the word: all letters upper case."]),
        ("capitalize-word", "word", str.capitalize, [
            "Capitalise the first letter of the word.", "Start the word with a capital letter.",
            "Make only the first letter uppercase.", "Write the word as a proper name.",
            "Output the word with an initial capital."]),
        ("word-length", "word", lambda w: str(len(w)), [
            "Count the letters in the word.", "How long is the word?",
            "Output the number of characters.", "Give the length of the word.",
            "Tell how many letters the word has."]),
        ("remove-vowels", "word", lambda w: "".join(c for c in w if c not in VOWELS) or "none", [
            "Delete the vowels from the word.", "Write the word without a, e, i, o and u.",
            "Remove every vowel.", "Keep only the consonants of the word.",
            "Output the word stripped of vowels."]),
        ("count-vowels", "word", lambda w: str(sum(c in VOWELS for c in w)), [
            "Count the vowels in the word.", "How many vowels does the word have?",
            "Output the number of a, e, i, o, u letters.", "Give the vowel count.",
            "Tally the vowels of the word."]),
        ("sort-letters", "word", lambda w: "".join(s(w)), [
            "Sort the letters of the word alphabetically.", "Put the word's letters in order.",
            "Rearrange the letters from a to z.", "Output the letters in alphabetical order.",
            "Alphabetise the characters of the word."]),
        ("double-letters", "word", lambda w: "".join(c * 2 for c in w), [
            "Double every letter of the word.", "Write each letter twice.",
            "Repeat each character two times in place.", "Stutter every letter once.",
            "Output the word with all letters doubled."]),
        ("first-letter", "word", lambda w: w[0], [
            "Write the first letter of the word.", "What letter does the word start with?",
            "Output the initial character.", "Give the word's first letter.",
            "Name the letter the word begins with."]),
        ("last-letter", "word", lambda w: w[-1], [
            "Write the last letter of the word.", "What letter does the word end with?",
            "Output the final character.", "Give the word's last letter.",
            "Name the letter the word finishes with."]),
        ("first-word", "words", lambda ws: ws[0], [
            "Write the first word of the list.", "Output the word that comes first.",
            "Give the leading word.", "Which word is first? Write it.",
            "Copy only the first word."]),
        ("last-word", "words", lambda ws: ws[-1], [
            "Write the last word of the list.", "Output the word that comes last.",
            "Give the final word.", "Which word is last? Write it.", "Copy only the last word."]),
        ("count-words", "words", lambda ws: str(len(ws)), [
            "Count the words.", "How many words are there?", "Output the number of words.",
            "Give the word count.", "Tell how many words the list has."]),
        ("longest-word", "words", lambda ws: max(ws, key=len), [
            "Write the longest word.", "Which word has the most letters?",
            "Output the longest of the words.", "Find the word of greatest length.",
            "Give the biggest word by length."]),
        ("shortest-word", "words", lambda ws: min(ws, key=len), [
            "Write the shortest word.", "Which word has the fewest letters?",
            "Output the shortest of the words.", "Find the word of least length.",
            "Give the smallest word by length."]),
        ("sort-words", "words", lambda ws: _fmt_list(s(ws)), [
            "Sort the words alphabetically.", "Put the words in dictionary order.",
            "Arrange the words from a to z.", "Output the words sorted.",
            "Alphabetise the list of words."]),
        ("reverse-words", "words", lambda ws: _fmt_list(ws[::-1]), [
            "Reverse the order of the words.", "Write the words from last to first.",
            "Output the word list backwards.", "Flip the order of the words.",
            "List the words in reverse."]),
        ("acronym", "words", lambda ws: "".join(w[0] for w in ws).upper(), [
            "Make an acronym from the first letters of the words.",
            "Write the capitalised initials of the words.",
            "Output the first letter of each word, in capitals.",
            "Abbreviate the words to their initials.", "Form the acronym of the list."]),
        ("uppercase-words", "words", lambda ws: _fmt_list(w.upper() for w in ws), [
            "Write all the words in capital letters.", "Convert every word to uppercase.",
            "Output the list in all caps.", "Capitalise every letter of every word.",
            "Make each word uppercase."]),
        ("sort-ascending", "nums", lambda xs: _fmt_list(s(xs)), [
            "Sort the numbers from smallest to largest.", "Order the list ascending.",
            "Output the numbers in increasing order.", "Arrange the values low to high.",
            "Return the sorted list."]),
        ("sort-descending", "nums", lambda xs: _fmt_list(s(xs, reverse=True)), [
            "Sort the numbers from largest to smallest.", "Order the list descending.",
            "Output the numbers in decreasing order.", "Arrange the values high to low.",
            "Return the list sorted in reverse."]),
        ("reverse-list", "nums", lambda xs: _fmt_list(xs[::-1]), [
            "Reverse the list of numbers.", "Write the numbers from last to first.",
            "Output the list backwards.", "Flip the order of the numbers.",
            "List the values in reverse."]),
        ("sum-list", "nums", lambda xs: str(sum(xs)), [
            "Add up all the numbers.", "What is the sum of the list?",
            "Output the total of the values.", "Compute the sum.", "Give the numbers' total."]),
        ("max-list", "nums", lambda xs: str(max(xs)), [
            "Write the largest number.", "What is the maximum of the list?",
            "Output the biggest value.", "Find the greatest number.", "Give the max."]),
        ("min-list", "nums", lambda xs: str(min(xs)), [
            "Write the smallest number.", "What is the minimum of the list?",
            "Output the least value.", "Find the lowest number.", "Give the min."]),
        ("count-list", "nums", lambda xs: str(len(xs)), [
            "Count the numbers in the list.", "How many numbers are there?",
            "Output the length of the list.", "Give the number of values.",
            "Tell how many items the list has."]),
        ("first-item", "nums", lambda xs: str(xs[0]), [
            "Write the first number.", "What number comes first?", "Output the leading value.",
            "Give the list's first element.", "Copy only the first number."]),
        ("last-item", "nums", lambda xs: str(xs[-1]), [
            "Write the last number.", "What number comes last?", "Output the final value.",
            "Give the list's last element.", "Copy only the last number."]),
        ("keep-even", "nums", lambda xs: _fmt_list([x for x in xs if x % 2 == 0]) or "none", [
            "Keep only the even numbers.", "Remove the odd numbers from the list.",
            "Output the even values, or none.", "Filter the list to even numbers.",
            "Which numbers are even? List them."]),
        ("keep-odd", "nums", lambda xs: _fmt_list([x for x in xs if x % 2]) or "none", [
            "Keep only the odd numbers.", "Remove the even numbers from the list.",
            "Output the odd values, or none.", "Filter the list to odd numbers.",
            "Which numbers are odd? List them."]),
        ("count-even", "nums", lambda xs: str(sum(x % 2 == 0 for x in xs)), [
            "Count the even numbers.", "How many even values are in the list?",
            "Output the number of even numbers.", "Tally the even values.",
            "Give the count of even numbers."]),
        ("is-sorted", "nums", lambda xs: _yes(xs == s(xs)), [
            "Say yes if the numbers are in increasing order, otherwise no.",
            "Is the list sorted ascending? Answer yes or no.",
            "Answer yes when no number is smaller than the one before it.",
            "Check whether the list is already sorted.", "Reply yes or no: sorted?"]),
        ("range-list", "nums", lambda xs: str(max(xs) - min(xs)), [
            "Subtract the smallest number from the largest.",
            "What is the range of the list?", "Output max minus min.",
            "Give the spread between the biggest and smallest value.",
            "Compute the difference of the extremes."]),
        ("dedupe-list", "nums", lambda xs: _fmt_list(dict.fromkeys(xs)), [
            "Remove repeated numbers, keeping the first of each.",
            "Drop the duplicates from the list.", "Output each number once, in order.",
            "Deduplicate the list.", "Keep only the first occurrence of every value."]),
        ("is-even", "number", lambda n: _yes(n % 2 == 0), [
            "Say yes if the number is even, otherwise no.", "Is the number even? Yes or no.",
            "Answer yes for even numbers and no for odd ones.", "Check whether it is even.",
            "Reply yes or no: even?"]),
        ("double-number", "number", lambda n: str(2 * n), [
            "Double the number.", "Multiply the number by two.", "Output twice the value.",
            "What is two times the number?", "Give the number added to itself."]),
        ("half-number", "number", lambda n: str(n // 2), [
            "Halve the number, rounding down.", "Divide the number by two, dropping the rest.",
            "Output half the value as a whole number.", "What is the number over two, floored?",
            "Give the integer half."]),
        ("digit-sum", "number", lambda n: str(sum(map(int, str(n)))), [
            "Add up the digits of the number.", "What is the sum of the digits?",
            "Output the digit sum.", "Compute the total of the number's digits.",
            "Give the sum of each digit."]),
        ("reverse-digits", "number", lambda n: str(n)[::-1], [
            "Write the digits of the number in reverse.", "Reverse the number's digits.",
            "Output the number backwards.", "Flip the digit order.",
            "Mirror the digits of the number."]),
        ("next-number", "number", lambda n: str(n + 1), [
            "Write the number that comes next.", "Add one to the number.",
            "Output the successor.", "What number follows it?", "Increment the number."]),
        ("previous-number", "number", lambda n: str(n - 1), [
            "Write the number that comes before.", "Subtract one from the number.",
            "Output the predecessor.", "What number precedes it?", "Decrement the number."]),
        ("square-number", "number", lambda n: str(n * n), [
            "Square the number.", "Multiply the number by itself.", "Output the value squared.",
            "What is the number to the power of two?", "Give the square."]),
        ("tens-digit", "number", lambda n: str(n // 10), [
            "Write the tens digit of the number.", "What digit is in the tens place?",
            "Output the number's tens digit.", "Give the second digit from the right.",
            "Name the tens digit."]),
        ("units-digit", "number", lambda n: str(n % 10), [
            "Write the last digit of the number.", "What digit is in the ones place?",
            "Output the units digit.", "Give the rightmost digit.", "Name the ones digit."]),
    ]


# Held out for unseen-task evaluation: a spread of input kinds and transform types.
HELD_OUT = {
    "reverse-word", "count-vowels", "last-2-letters", "acronym", "longest-word",
    "sort-descending", "add-3-each", "keep-odd", "divisible-by-3", "digit-sum",
    "spell-commas", "words-with-e",
}


def _make_generate(name: str, kind: str, fn: Transform):
    sample, fmt = INPUTS[kind]

    def generate(rng: random.Random) -> tuple[str, Example]:
        x = sample(rng)
        x_text = fmt(x)
        y = str(fn(x))
        prompt = f"Input: {x_text}"
        ex = Example(name, make_uid(name, x_text), prompt, y, y, {"input": x_text})
        return x_text, ex

    return generate


def instruct_tasks() -> list[Task]:
    specs = _param_families() + _plain_families()
    tasks = []
    for name, kind, fn, descriptions in specs:
        tasks.append(Task(
            name=name, family="instruct", kind="exact", descriptions=descriptions,
            generate=_make_generate(name, kind, fn),
            split_sizes={"train": 200, "validation": 50, "test": 100},
            seen=name not in HELD_OUT, group="instruct",
        ))
    return tasks
