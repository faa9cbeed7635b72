"""The v2 task suite's rules: the instruction grid (held-out cells with seen rows and columns, no
duplicate families, no constant answer, no unresolved ties), descriptions (30+, probes held
back, held-out descriptions nowhere in training), tags, and the splits (disjoint and distinct by
content key)."""

from __future__ import annotations

from collections import Counter

import pytest

from t2ray.tasks import get_task, list_tasks
from t2ray.tasks.grid import ARGS, HELD_OUT, OPS, _word_list, answer, cell_name

V2 = "v2"


@pytest.fixture(scope="module")
def grid():
    return [t for t in list_tasks("instruct", V2)]


def test_held_out_cells_have_seen_rows_and_columns(grid):
    assert len(grid) == len(OPS) * len(ARGS) and len(HELD_OUT) >= 12
    held = {t.cell for t in grid if not t.seen}
    assert held == HELD_OUT
    for op, arg in held:
        row = [a for a in ARGS if a != arg and (op, a) not in held]
        column = [o for o in OPS if o != op and (o, arg) not in held]
        assert len(row) >= 4 and len(column) >= 4, (op, arg)


def test_no_duplicate_families_no_constant_answers_no_ties(grid):
    import random

    rng = random.Random(0)
    inputs = [_word_list(rng) for _ in range(200)]
    signatures = {}
    for t in grid:
        op, arg = t.cell
        kind = ARGS[arg].kind  # families on different inputs differ by what they take
        sig = (kind, *(answer(op, arg, ws if kind == "list" else ws[:1]) for ws in inputs))
        assert sig not in signatures, f"{t.name} duplicates {signatures.get(sig)}"
        signatures[sig] = t.name
        answers = [ex.answer for ex in t.examples("test")]
        top = Counter(answers).most_common(1)[0][1] / len(answers)
        assert top <= 0.2, f"{t.name}: one answer is {100 * top:.0f}% of test"
    for ex in get_task(cell_name("reverse", "longest"), V2).examples("test"):
        lengths = sorted(map(len, ex.meta["input"].split()))
        assert lengths[-1] > lengths[-2]  # the longest word is unique


def test_descriptions_probes_and_no_leak(grid):
    held_out_text = {d for t in grid if not t.seen for d in t.descriptions}
    for t in grid:
        assert len(t.descriptions) + len(t.probe_descriptions) >= 30
        assert len(set(t.descriptions)) == len(t.descriptions)
        if t.seen:
            assert len(t.probe_descriptions) >= 3
            assert not set(t.probe_descriptions) & set(t.descriptions)
            assert not held_out_text & set(t.descriptions + t.probe_descriptions)
        else:
            assert t.probe_descriptions == []
    # numbers appear both as words and as digits
    firsts = get_task(cell_name("first-two", "word"), V2)
    text = " ".join(firsts.descriptions + firsts.probe_descriptions)
    assert "two" in text and "2" in text


def test_tags_are_unique_and_opaque(grid):
    tags = [t.tag for t in grid]
    assert len(set(tags)) == len(tags) and all(t and t[0] == "T" and t[1:].isdigit()
                                               for t in tags)


@pytest.mark.parametrize("name", ["math", "code", "reasoning", "math-hard", "code-hard",
                                  "reasoning-hard", "reverse-longest", "upper-each"])
def test_splits_are_disjoint_and_distinct_by_content(name):
    task = get_task(name, V2)
    keys = {split: task.content_keys(split) for split in ("train", "validation", "test")}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks) == task.split_sizes[split]
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & (set(keys["train"]) | set(keys["test"]))
    if name == "code":
        assert len(keys["test"]) >= 500


def test_unseen_core_families_read_like_their_seen_counterparts():
    for seen, unseen in (("math", "math-hard"), ("code", "code-hard"),
                         ("reasoning", "reasoning-hard")):
        a, b = (get_task(n, V2).examples("validation", 20) for n in (seen, unseen))
        if seen == "code":
            assert all(e.prompt.startswith(("Write a function", "Define")) for e in a + b)
        if seen == "reasoning":
            assert all(e.prompt.startswith("Which") and "\nD) " in e.prompt for e in a + b)
        if seen == "math":
            assert all(e.prompt.endswith("?") and "\n" not in e.prompt for e in a + b)
            assert all(len(e.meta["steps"]) == len(a[0].meta["steps"]) + 1 for e in b)


def test_reasoning_worked_form_decomposes_the_choice():
    for ex in get_task("reasoning", V2).examples("validation", 50):
        head, _, tail = ex.solution.rpartition(" The answer is ")
        assert tail == f"{ex.answer}." and head.count("=") == 4  # each option stated
        assert head.endswith(f": {ex.answer}.")  # then the comparison


@pytest.mark.slow  # the default suite's time; CI runs it
def test_v2_pretraining_corpus_shows_every_cell_by_tag_and_no_held_out_description():
    from t2ray.experiments.pretrain import PretrainConfig, build_corpus
    from t2ray.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    corpus = build_corpus(PretrainConfig(suite=V2), tok)
    prompts = {tok.decode(s.prompt_ids) for s in corpus["instruct"]}
    grid = list_tasks("instruct", V2)
    for t in grid:  # held-out cells included: the latent skill behind the tag
        assert any(p.startswith(f"<bos>{t.tag}\n") for p in prompts), t.name
    text = "\n".join(prompts)
    for t in grid:
        for d in t.descriptions + t.probe_descriptions:
            assert d not in text
    described = build_corpus(PretrainConfig(suite=V2, seen_instruct_prompt="description"), tok)
    text = "\n".join(tok.decode(s.prompt_ids) for s in described["instruct"])
    assert any(d in text for t in grid if t.seen for d in t.descriptions)
    for t in grid:
        assert not any(d in text for d in t.probe_descriptions)
        if not t.seen:
            assert not any(d in text for d in t.descriptions) and f"{t.tag}\n" in text


def test_base_tables_pivot_the_grid_and_flag_core_families_outside_the_aim():
    from t2ray.experiments.base import base_tables

    def row(table, task, method, mean):
        return {"table": table, "task": task, "method": method, "mean": mean, "n": 200,
                "ci95": [mean - 5, mean + 5], "interval": "wilson", "distinct": 200}

    held = [t.name for t in list_tasks("instruct", V2) if not t.seen][:2]
    rows = [row("b", "math", "base", 12.0), row("b", "code", "base", 40.0)]
    for k, name in enumerate(held):
        rows += [row("b", name, "base", 0.0), row("b", name, "base+desc", 1.0 + k),
                 row("b", name, "base+tag", 70.0 + 10 * k), row("o", name, "task-lora", 60.0)]
    text = base_tables(rows, "b", "o")
    lines = text.splitlines()
    assert "| math | yes | open answer | 200 (200) | 12.0 [7.0, 17.0] | wilson | **no** |" in lines
    assert any(line.startswith("| code |") and line.endswith("| yes |") for line in lines)
    assert f"| {held[0]} | {get_task(held[0], V2).tag} | yes | 0.0 | 1.0 | 70.0 [65.0, 75.0] | " \
        "60.0 |" in lines
    assert "| held out | 2 | 0.0 | 1.5 | 75.0 | 60.0 (2 cells) |" in lines
