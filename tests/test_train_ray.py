"""Training on Ray Train: two workers, a killed worker resumes from its checkpoint, and the job
runs through `ray job submit` against a private `ray start --head` cluster."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_cluster import RayCluster, registered_checkpoints, submit
from ray_local import local_ray  # noqa: F401

from t2ray.rl.launch import train
from t2ray.rl.trainer import TrainConfig
from t2ray.svf import ExpertVector

pytestmark = pytest.mark.slow



def config(tmp_path, path, cache, **kw) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / "out"), model=str(path), task="reasoning",
                       svd_cache=str(cache.root), prompts_per_step=4, eval_n=4, threads=1,
                       lr=0.1, grad_clip=1.0, **kw)


def train_worker_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if cmd.startswith("ray::RayTrainWorker"):
                pids.append(int(proc.name))
    return pids


@pytest.mark.timeout(1200)
def test_two_workers_and_a_killed_worker_resumes(local_ray, tiny_random, tmp_path):  # noqa: F811
    path, cache = tiny_random
    cfg = config(tmp_path, path, cache, steps=12, checkpoint_every=2, eval_every=12,
                 deepspeed_stage=2)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(train(cfg, workers=2,
                                                                 max_failures=1)))
    thread.start()
    storage = tmp_path / "out" / "ray_train"
    deadline = time.time() + 600  # generous: CI machines are shared
    while len(registered_checkpoints(storage)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(registered_checkpoints(storage)) >= 2, "no checkpoints were registered"
    victims = train_worker_pids()
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    steps = [h["step"] for h in result["history"]]
    assert steps[-1] == 12 and steps[0] >= 3  # the new worker group resumed, not restarted
    expert = ExpertVector.load(tmp_path / "out" / "expert", expect_fingerprint=cache.fingerprint)
    assert expert.num_params == result["sync_bytes"] // 4


@pytest.mark.timeout(900)
def test_zero3_rl_rollouts_stay_in_lock_step(local_ray, tiny_random, tmp_path):  # noqa: F811
    """ZeRO-3 partitions the weights, so both workers sample through the policy's forward in
    lock-step; completions of different lengths must not deadlock the gathers."""
    from t2ray.models import load_model
    from t2ray.rl.trainer import full_copy_bytes

    path, cache = tiny_random
    cfg = config(tmp_path, path, cache, steps=2, eval_every=2, deepspeed_stage=3,
                 samples_per_prompt=2, temperature=1.0)
    result = train(cfg, workers=2)
    assert [h["step"] for h in result["history"]] == [1, 2]
    full = full_copy_bytes(load_model(str(path))[0])
    assert result["full_copy_bytes"] == full
    # each rank holds about half the base weights (the small tensors stay whole)
    assert all(h["local_weight_bytes"] < 0.7 * full for h in result["history"])
    expert = ExpertVector.load(tmp_path / "out" / "expert", expect_fingerprint=cache.fingerprint)
    assert expert.num_params == result["sync_bytes"] // 4


@pytest.mark.timeout(1200)
def test_t2l_on_two_workers_resumes_after_a_killed_worker(local_ray, tmp_path):  # noqa: F811
    from t2ray.t2l.generate import T2LCheckpoint
    from t2ray.t2l.train import T2LTrainConfig, train_t2l

    cfg = T2LTrainConfig(out=str(tmp_path / "t2l"), tasks=["upper-word", "dashes-first"],
                         tasks_per_batch=2, examples_per_task=1, steps=40, checkpoint_every=2,
                         eval_every=40, eval_tasks=1, eval_n=2, latent=32, head_in=64)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(train_t2l(cfg, workers=2)))
    thread.start()
    storage = tmp_path / "t2l" / "ray_train"
    deadline = time.time() + 600
    while len(registered_checkpoints(storage)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(registered_checkpoints(storage)) >= 2, "no checkpoints were registered"
    victims = train_worker_pids()
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    steps = [h["step"] for h in result["history"]]
    assert steps[-1] == 40 and steps[0] >= 3  # resumed from a checkpoint, not restarted
    assert T2LCheckpoint.load(tmp_path / "t2l" / "checkpoint").net.cfg.variant == "M"


def test_ray_job_submit(tiny_random, tmp_path):
    path, cache = tiny_random
    cluster = RayCluster(cpus=2)
    try:
        cluster.start_head()
        out = tmp_path / "job-out"
        job = submit(cluster, [sys.executable, "jobs/train_svf.py", "--model", str(path),
                               "--task", "reasoning", "--workers", "2", "--steps", "2",
                               "--out", str(out)])
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout
        assert ExpertVector.load(out / "expert").task == "reasoning"
    finally:
        cluster.stop()
