"""Task registry: the core families, the instruction families, and real-format dataset loaders."""

from __future__ import annotations

from functools import lru_cache

from t2ray.tasks.base import SPLITS, Example, Task
from t2ray.tasks.core import core_tasks
from t2ray.tasks.instruct import instruct_tasks
from t2ray.tasks.route import route_task

CORE_SEEN = ("math", "code", "reasoning")
CORE_UNSEEN = ("math-hard", "code-hard", "reasoning-hard")


SUITES = ("v1", "v2")
# The suite the bundled base model was pretrained on, and so the default everywhere: v2
# (`core_v2.py`, `grid.py`). v1 (`core.py`, `instruct.py`) stays reproducible by name.
SUITE = "v2"


@lru_cache(maxsize=None)
def registry(suite: str | None = None) -> dict[str, Task]:
    suite = suite or SUITE
    if suite not in SUITES:
        raise ValueError(f"unknown task suite {suite!r}; choose one of {SUITES}")
    if suite == "v1":
        tasks = core_tasks() + instruct_tasks()
    else:
        from t2ray.tasks.core_v2 import core_tasks_v2
        from t2ray.tasks.grid import grid_tasks

        tasks = core_tasks_v2() + grid_tasks()
    out: dict[str, Task] = {}
    for t in [*tasks, route_task(suite)]:
        if t.name in out:
            raise ValueError(f"duplicate task name {t.name!r}")
        out[t.name] = t
    return out


def get_task(name: str, suite: str | None = None) -> Task:
    tasks = registry(suite)
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; `t2ray tasks list` shows the {len(tasks)} tasks")
    return tasks[name]


def list_tasks(group: str | None = None, suite: str | None = None) -> list[Task]:
    return [t for t in registry(suite).values() if group is None or t.group == group]


__all__ = ["SPLITS", "SUITE", "SUITES", "Example", "Task", "CORE_SEEN", "CORE_UNSEEN", "registry",
           "get_task", "list_tasks"]
