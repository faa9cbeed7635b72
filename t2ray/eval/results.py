"""Result rows and the tables made of them: the one writer of docs/results.json (format in
DESIGN.md), markdown tables for docs/results.md and rich tables for the console."""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rich.console import Console
from rich.table import Table

from t2ray.eval.harness import EvalRow

METRICS = ("accuracy",)


@dataclass(frozen=True)
class ResultRow:
    """One number of a results table: mean +- sd over seeds of one method on one task."""

    table: str
    task: str
    method: str
    mean: float  # percent
    sd: float
    n_seeds: int
    params: int | None
    command: str
    metric: str = "accuracy"
    n: int | None = None  # items scored per seed
    extra: dict = field(default_factory=dict)  # table-specific fields (seeds, ci95, p-values...)

    def __post_init__(self):
        if not (self.table and self.task and self.method):
            raise ValueError(f"a result row needs table, task and method: {self}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {METRICS}")
        if self.n_seeds < 1 or not math.isfinite(self.mean) or not math.isfinite(self.sd):
            raise ValueError(f"a result row needs n_seeds >= 1 and finite mean and sd: {self}")
        clash = set(self.extra) & {f for f in self.__dataclass_fields__ if f != "extra"}
        if clash:
            raise ValueError(f"extra fields {sorted(clash)} shadow the row's own fields")

    def as_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        order = ("table", "task", "method", "metric", "mean", "sd", "n_seeds", "params",
                 "command", "n")
        return {**{k: d[k] for k in order}, **extra}

    @classmethod
    def from_dict(cls, d: dict) -> "ResultRow":
        own = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        return cls(**own, extra={k: v for k, v in d.items() if k not in own})

    @classmethod
    def from_eval(cls, row: EvalRow, table: str, method: str, command: str,
                  params: int | None = None) -> "ResultRow":
        """One greedy run: sd 0, one seed, its 95% interval and how it was made."""
        return cls(table, row.task, method, round(100 * row.accuracy, 2), 0.0, 1, params,
                   command, n=row.n,
                   extra={"ci95": [round(100 * row.ci_low, 2), round(100 * row.ci_high, 2)],
                          "interval": row.interval, "distinct": row.distinct})

    def get(self, key: str, default=None):
        return self.extra.get(key, default)


def invocation() -> str:
    """The command line that is running, as a person would retype it (`t2ray eval ...` or
    `python jobs/x.py ...`), for the `command` field of result rows."""
    program = sys.argv[0]
    head = f"python {program}" if program.endswith(".py") else Path(program).name
    return " ".join([head, *(shlex.quote(a) for a in sys.argv[1:])])


def merge_results(path: Path, new_rows: Sequence[ResultRow]) -> None:
    """Write rows into a results.json: replace rows with the same (table, task, method), keep
    the others. Every row of docs/results.json goes through here."""
    if not all(isinstance(r, ResultRow) for r in new_rows):
        raise TypeError("merge_results takes ResultRow objects")
    old = [ResultRow.from_dict(d) for d in json.loads(path.read_text())] if path.exists() else []
    keys = {(r.table, r.task, r.method) for r in new_rows}
    kept = [r for r in old if (r.table, r.task, r.method) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.as_dict() for r in (*kept, *new_rows)], indent=1) + "\n")


# --- tables for people
def replace_section(path: Path, name: str, section: str, header: str = "") -> None:
    """Put `section` between the markers `<!-- name:start -->` and `<!-- name:end -->` of a
    markdown file, replacing what a previous run wrote there, or at its end (a missing file
    starts with `header`). The text around the markers is left as people wrote it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else header
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + block + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_accuracy_table(rows: Iterable[EvalRow], title: str) -> None:
    table = Table("task", "n", "accuracy", "95% CI", "seconds", title=title)
    for r in rows:
        table.add_row(r.task, str(r.n), f"{100 * r.accuracy:.1f}%",
                      f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]", f"{r.seconds:.1f}")
    Console().print(table)


def markdown_accuracy_table(rows: Iterable[EvalRow]) -> str:
    lines = ["| task | n | accuracy (%) | 95% CI |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.n} | {100 * r.accuracy:.1f} | "
                     f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] |")
    return "\n".join(lines)


def pivot_table(rows: Sequence[ResultRow]) -> str:
    """Markdown: one line per task, one column per method (with its parameter count), each cell
    mean +- sd and, where the row has one, the McNemar p-value against the base model."""
    methods = list(dict.fromkeys(r.method for r in rows))
    params = {r.method: r.params for r in rows}
    lines = ["| task | " + " | ".join(f"{m} ({params[m]:,} params)" if params[m] else m
                                      for m in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for task in dict.fromkeys(r.task for r in rows):
        cells = []
        for m in methods:
            r = next((r for r in rows if r.task == task and r.method == m), None)
            if r is None:
                cells.append("")
                continue
            p = r.get("mcnemar_p_vs_base_seed0")
            sig = "" if p is None else f" (p={p:.2g})"
            cells.append(f"{r.mean:.1f} +- {r.sd:.1f}{sig}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def row_table(rows: Sequence[ResultRow], columns: dict, title: str,
              console: Console | None = None) -> str:
    """The same rows as a markdown table (returned) and a rich table (printed): one line per
    row, `columns` mapping a header to a function of the row that gives the cell text."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    table = Table(*columns, title=title)
    for r in rows:
        cells = [str(fn(r)) for fn in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
        table.add_row(*cells)
    (console or Console()).print(table)
    return "\n".join(lines) + "\n"


def mean_sd_cell(r: ResultRow) -> str:
    return f"{r.mean:.1f} +- {r.sd:.1f}"


# the first columns of every per-row table; tables add their own after them
ROW_COLUMNS = {"task": lambda r: r.task, "method": lambda r: r.method,
               "accuracy (mean +- sd)": mean_sd_cell, "seeds": lambda r: r.n_seeds}


def kept_json(path: Path, key: dict, compute: Callable[[], object]):
    """A result kept at `path` and reused only under the same `key` (base and adapter
    fingerprints, the scored items, the settings): a changed model never reuses a stale score,
    and a long sweep still resumes where it stopped."""
    if path.exists():
        kept = json.loads(path.read_text())
        if isinstance(kept, dict) and kept.get("key") == key:
            Console().print(f"[dim]reusing {path}[/dim]")
            return kept["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}))
    return value


def verdict_entry(task: str, method: str, split: str, verdicts: Sequence[bool],
                  seed: int | None = None) -> dict:
    """One row of a scores file: a (task, method[, seed]) and its verdicts in split order."""
    return {"task": task, "method": method, "seed": seed, "split": split, "n": len(verdicts),
            "verdicts": "".join("1" if v else "0" for v in verdicts)}


def write_verdicts(path: Path, table: str, entries: Sequence[dict], command: str) -> None:
    """Keep the per-item verdicts behind a table's rows (gzipped JSON lines, one `verdict_entry`
    each, the verdicts as a 0/1 string in split order), replacing that table's earlier rows for
    the same (task, method, seed): a table can then be re-derived and re-tested without running a
    model."""
    import gzip

    def key(d: dict) -> tuple:
        return d["task"], d["method"], d.get("seed")

    kept = read_verdicts(path) if path.exists() else []
    new = [{**e, "table": table, "command": command} for e in entries]
    replaced = {key(d) for d in new}
    kept = [d for d in kept if key(d) not in replaced] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(d, sort_keys=True) + "\n" for d in kept)


def read_verdicts(path: Path) -> list[dict]:
    import gzip

    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
