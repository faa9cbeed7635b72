"""Loaders of the published data sets, on small fixtures in each data set's published schema."""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t2ray.tasks import loaders
from t2ray.tasks.base import SPLITS
from t2ray.tasks.loaders import SchemaError, load_dataset_examples, real_task
from t2ray.tasks.rewards import build_program

DATA = Path(__file__).parent / "fixtures" / "datasets"
SNI_FILE = DATA / "sni" / "task190_snli_classification.json"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- GSM8K
def test_gsm8k_fields_and_reward():
    task = real_task("gsm8k", DATA / "gsm8k" / "test.jsonl")
    exs = task.examples("test")
    assert [e.answer for e in exs] == ["72", "10", "52000"]
    first = exs[0]
    assert first.task == "gsm8k" and first.prompt.startswith("Natalia sold clips")
    assert first.solution == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72."
    )
    assert "####" not in exs[2].solution and exs[2].solution.endswith("The answer is 52000.")
    for ex in exs:
        assert task.reward(ex, ex.solution) == 1.0
        assert task.reward(ex, "The answer is 13.") == -1.0


def test_gsm8k_directory_parquet_gz_and_limit(tmp_path):
    reference = loaders.load_gsm8k(DATA / "gsm8k")  # directory: picks test.jsonl
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:2])
    assert loaders.load_gsm8k(tmp_path, "test") == reference
    assert loaders.load_gsm8k(tmp_path, "train") == reference[:2]
    assert loaders.load_gsm8k(tmp_path / "train.jsonl.gz", limit=1) == reference[:1]


# ---------------------------------------------------------------- MATH
def test_math_directory_layout_and_reward():
    task = real_task("math", DATA / "math")
    exs = task.examples("test")
    # number_theory/4.json writes `\boxed 2` without braces: no parsable gold, skipped.
    assert [e.answer for e in exs] == ["\\sqrt{2}", "10", "\\frac{7}{8}"]
    assert exs[0].meta == {"level": "Level 3", "type": "Algebra"}
    assert task.kind == "boxed" and not task.seen
    for ex in exs:
        assert task.reward(ex, ex.solution) == 1.0
        assert task.reward(ex, "So the answer is $\\boxed{11}$.") == -1.0
    assert task.reward(exs[2], "$\\boxed{\\dfrac{7}{8}}$") == 1.0


# ---------------------------------------------------------------- MBPP
def test_mbpp_fields_and_id_split():
    whole_file = DATA / "mbpp" / "mbpp.jsonl"  # the original release: all splits in one file
    exs = loaders.load_mbpp(whole_file)
    assert [e.meta["task_id"] for e in exs] == [11, 12, 13]
    assert [e.meta["task_id"] for e in loaders.load_mbpp(whole_file, "train")] == [601]
    ex = exs[0]
    assert ex.prompt.startswith("Write a python function to remove first and last occurrence")
    assert ex.prompt.split("\n")[1:] == [
        "Your code should pass these tests:",
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ]
    assert "\r" not in ex.solution and ex.solution.startswith("def remove_Occ(s,ch):")
    assert ex.meta["code_prefix"] == "" and "challenge" not in ex.meta["tests"]
    assert "hellolloll" not in ex.meta["tests"]  # challenge_test_list is not part of the tests
    assert exs[2].meta["tests"].startswith("import heapq as hq\nassert heap_queue_largest(")


def test_mbpp_sanitized_schema(tmp_path):
    row = {"source_file": "Benchmark Questions Verification V2.ipynb", "task_id": 2,
           "prompt": "Write a function to add two numbers.",
           "code": "def add(a, b):\n    return a + b",
           "test_imports": ["import math"], "test_list": ["assert add(1, 2) == 3"]}
    (ex,) = loaders.load_mbpp(_write_jsonl(tmp_path / "prompt.jsonl", [row]), "prompt")
    assert ex.prompt.startswith("Write a function to add two numbers.\nYour code should pass")
    assert ex.meta["tests"] == "import math\nassert add(1, 2) == 3"


def test_mbpp_reward_runs_the_sandbox():
    task = real_task("mbpp", DATA / "mbpp" / "mbpp.jsonl")
    for ex in task.examples("test"):
        assert task.reward(ex, ex.solution) == 1.0
    ex = task.examples("test")[0]
    assert task.reward(ex, "```python\ndef remove_Occ(s, ch):\n    return s\n```") == -1.0


# ---------------------------------------------------------------- HumanEval
def test_humaneval_default_source_is_the_package():
    exs = loaders.load_humaneval()
    assert len(exs) == 164
    ex = exs[0]
    assert ex.meta["task_id"] == "HumanEval/0" and ex.meta["entry_point"] == "has_close_elements"
    assert ex.prompt == ex.meta["code_prefix"] and ex.meta["tests"].endswith(
        "\ncheck(has_close_elements)\n")
    program = build_program(ex, ex.solution)
    assert program.startswith(ex.prompt + ex.solution)


def test_humaneval_local_file_and_reward():
    task = real_task("humaneval", DATA / "humaneval" / "HumanEval-sample.jsonl")
    assert [e.meta["task_id"] for e in task.examples("test")] == ["HumanEval/0", "HumanEval/53"]
    for ex in task.examples("test"):
        assert task.reward(ex, ex.solution) == 1.0
        assert task.reward(ex, "    return None\n") == -1.0
    with pytest.raises(ValueError, match="only a 'test' split"):
        loaders.load_humaneval(split="train")


# ---------------------------------------------------------------- ARC
def test_arc_hub_schema_and_reward():
    task = real_task("arc", DATA / "arc")  # directory: picks test.jsonl
    exs = task.examples("test")
    # The five-option row is skipped: the choice verifier reads A-D only.
    assert [e.answer for e in exs] == ["C", "C", "B"]
    assert exs[0].prompt.splitlines() == [
        ("An astronomer observes that a planet rotates faster after a meteorite impact. "
         "Which is the most likely effect of this increase in rotation?"),
        "A) Planetary density will decrease.",
        "B) Planetary years will become longer.",
        "C) Planetary days will become shorter.",
        "D) Planetary gravity will become stronger.",
    ]
    assert exs[1].prompt.splitlines()[3] == "C) less friction"  # labels 1-4 mapped to A-D
    assert exs[2].prompt.count("\n") == 3 and exs[2].solution == "centimeters. The answer is B."
    assert task.seen  # not ARC-Challenge
    for ex in exs:
        assert task.reward(ex, ex.solution) == 1.0
        assert task.reward(ex, "The answer is A.") == -1.0
        assert task.reward(ex, "I am not sure.") == -1.0


def test_arc_original_release_schema():
    task = real_task("arc", DATA / "arc" / "ARC-Challenge-Test.jsonl")
    exs = task.examples("test")
    assert [e.answer for e in exs] == ["A", "C"]
    assert exs[1].prompt.endswith("C) the size of its appetite\nD) the color of its fur")
    assert exs[1].meta["id"] == "MCAS_2004_9_11"
    assert not task.seen


# ---------------------------------------------------------------- Super-NaturalInstructions
def test_sni_task_file():
    task = real_task("sni", SNI_FILE, split="all")
    assert task.name == "task190_snli_classification" and task.kind == "exact"
    assert task.group == "instruct" and len(task.descriptions) == 1
    assert task.descriptions == loaders.sni_descriptions(SNI_FILE)
    assert task.descriptions[0].startswith("In this task, you're given a pair of sentences")
    exs = task.examples("all")
    assert [e.answer for e in exs] == ["E", "C", "N", "E", "C"]
    assert exs[0].prompt.startswith("Sentence 1: A woman is walking her dog in the park.")
    assert exs[0].meta == {"definition": task.descriptions[0], "all_outputs": ["E"]}
    for ex in exs:
        assert ex.task == task.name
        assert task.reward(ex, ex.solution) == 1.0
        assert task.reward(ex, "entailment") == -1.0


def test_sni_hash_splits_partition_the_instances():
    parts = [loaders.load_sni(SNI_FILE, split) for split in SPLITS]
    assert sorted(e.uid for p in parts for e in p) == sorted(
        e.uid for e in loaders.load_sni(SNI_FILE, "all"))


# ---------------------------------------------------------------- hub ids
def test_hub_ids_go_to_datasets_load_dataset(monkeypatch):
    calls = []
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]

    def load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return rows[:1]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    assert [e.answer for e in loaders.load_gsm8k(split="train")] == ["72"]  # default hub id
    assert len(loaders.load_gsm8k("some/mirror:a,b")) == 2  # configs are concatenated
    assert calls == [("openai/gsm8k", "main", "train"), ("some/mirror", "a", "test"),
                     ("some/mirror", "b", "test")]


# ---------------------------------------------------------------- registry, tasks, errors
def test_registry_and_dispatch():
    assert set(loaders.LOADERS) == set(loaders.REAL_TASK_KINDS)
    assert load_dataset_examples("gsm8k", DATA / "gsm8k", "test", limit=2) == loaders.load_gsm8k(
        DATA / "gsm8k")[:2]
    with pytest.raises(ValueError, match="unknown data set 'gsm9k'"):
        load_dataset_examples("gsm9k", DATA / "gsm8k")
    with pytest.raises(ValueError, match="unknown data set"):
        real_task("nope", DATA)


def test_dataset_task_holds_its_split():
    task = real_task("gsm8k", DATA / "gsm8k", limit=2)
    assert task.split_sizes == {"test": 2}
    assert task.examples("test", n=1) == task.examples("test")[:1]
    key, ex = task.generate(random.Random(0))
    assert ex in task.examples("test") and key == ex.uid
    with pytest.raises(ValueError, match="holds the 'test' split"):
        task.examples("train")


def test_missing_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        loaders.load_gsm8k(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="no 'validation' data"):
        loaders.load_gsm8k(DATA / "gsm8k", "validation")
    for hub_or_none in (None, "Muennighoff/natural-instructions"):
        with pytest.raises(ValueError, match="sni: needs a local task file"):
            loaders.load_sni(hub_or_none)


@pytest.mark.parametrize(("name", "row", "missing"), [
    ("gsm8k", {"question": "How many?"}, "answer"),
    ("math", {"problem": "Compute 1+1."}, "solution"),
    ("mbpp", {"task_id": 11, "text": "Write f.", "code": "def f(): pass"}, "test_list"),
    ("humaneval", {"task_id": "HumanEval/0", "prompt": "def f():\n"}, "canonical_solution"),
    ("arc", {"id": "x", "question": "Why?", "answerKey": "A"}, "choices"),
])
def test_wrong_schema_names_field_and_file(tmp_path, name, row, missing):
    path = _write_jsonl(tmp_path / "test.jsonl", [row])
    where = re.escape(f"{tmp_path}/test.jsonl line 1")
    with pytest.raises(SchemaError, match=rf"missing field '{missing}' in {where}"):
        load_dataset_examples(name, path)


def test_bad_values_are_schema_errors(tmp_path):
    gsm = _write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "It is 4."}])
    with pytest.raises(SchemaError, match="'#### <number>'.*g.jsonl line 1"):
        loaders.load_gsm8k(gsm)
    choices = {"text": ["a", "b"], "label": ["A", "B"]}
    arc = _write_jsonl(tmp_path / "a.jsonl",
                       [{"id": "x", "question": "Q?", "answerKey": "E", "choices": choices}])
    with pytest.raises(SchemaError, match="answerKey 'E'"):
        loaders.load_arc(arc)
    sni = json.loads(SNI_FILE.read_text())
    del sni["Instances"]
    (tmp_path / "task1_x.json").write_text(json.dumps(sni))
    with pytest.raises(SchemaError, match="missing field 'Instances' in .*task1_x.json"):
        loaders.load_sni(tmp_path / "task1_x.json")
    (tmp_path / "bad.jsonl").write_text('{"question": "Q?"\n')
    with pytest.raises(SchemaError, match="invalid JSON in .*bad.jsonl line 1"):
        loaders.load_gsm8k(tmp_path / "bad.jsonl")
    (tmp_path / "test.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        loaders.load_gsm8k(tmp_path / "test.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no 'test' examples"):
        loaders.load_gsm8k(tmp_path / "empty.jsonl")
