"""Tables for people (console, markdown) and rows for machines (docs/results.json)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.table import Table

from t2ray.eval.harness import EvalRow


def invocation() -> str:
    """The command line that is running, as a person would retype it (`t2ray eval ...` or
    `python jobs/x.py ...`), for the `command` field of result rows."""
    program = sys.argv[0]
    head = f"python {program}" if program.endswith(".py") else Path(program).name
    return " ".join([head, *(shlex.quote(a) for a in sys.argv[1:])])


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


def result_rows(rows: Iterable[EvalRow], table: str, method: str, command: str,
                params: int | None = None) -> list[dict]:
    """Rows in the docs/results.json format (DESIGN.md); one greedy run, so sd is 0, n_seeds 1."""
    return [{"table": table, "task": r.task, "method": method, "metric": "accuracy",
             "mean": round(100 * r.accuracy, 2), "sd": 0.0, "n_seeds": 1, "params": params,
             "command": command, "n": r.n, "ci95": [round(100 * r.ci_low, 2),
                                                    round(100 * r.ci_high, 2)]}
            for r in rows]


def merge_results(path: Path, new_rows: list[dict]) -> None:
    """Replace rows with the same (table, task, method) and keep the others."""
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["table"], r["task"], r["method"]) for r in new_rows}
    kept = [r for r in old if (r["table"], r["task"], r["method"]) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + new_rows, indent=1) + "\n")
