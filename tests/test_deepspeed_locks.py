"""A JIT-build lock left by a killed run must not hang every later DeepSpeed start."""

import os
import time

from t2ray.distributed.deepspeed import clear_stale_build_locks


def test_only_stale_build_locks_are_removed(tmp_path):
    old, fresh = tmp_path / "op_a" / "lock", tmp_path / "op_b" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir()
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert clear_stale_build_locks(tmp_path) == [old]
    assert not old.exists() and fresh.exists()  # a build in progress keeps its lock
