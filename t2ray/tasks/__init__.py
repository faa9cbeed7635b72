"""Task registry: the core families, the instruction families, and real-format dataset loaders."""

from __future__ import annotations

from functools import lru_cache

from t2ray.tasks.base import SPLITS, Example, Task
from t2ray.tasks.core import core_tasks
from t2ray.tasks.instruct import instruct_tasks
from t2ray.tasks.route import route_task

CORE_SEEN = ("math", "code", "reasoning")
CORE_UNSEEN = ("math-hard", "code-hard", "reasoning-hard")


@lru_cache(maxsize=1)
def registry() -> dict[str, Task]:
    tasks = core_tasks() + instruct_tasks() + [route_task()]
    out: dict[str, Task] = {}
    for t in tasks:
        if t.name in out:
            raise ValueError(f"duplicate task name {t.name!r}")
        out[t.name] = t
    return out


def get_task(name: str) -> Task:
    tasks = registry()
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; `t2ray tasks list` shows the {len(tasks)} tasks")
    return tasks[name]


def list_tasks(group: str | None = None) -> list[Task]:
    return [t for t in registry().values() if group is None or t.group == group]


__all__ = ["SPLITS", "Example", "Task", "CORE_SEEN", "CORE_UNSEEN", "registry", "get_task",
           "list_tasks"]
