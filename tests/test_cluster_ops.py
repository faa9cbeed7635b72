"""Cluster operations on real Ray processes: every job through `ray job submit`, and a two-node
cluster on this machine that loses its second node in the middle of SVF training.

Each cluster gets its own temp dir and ports (tests/ray_cluster.py) and is stopped by killing
only the processes it started; never `ray stop`, which would kill every Ray here."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_cluster import Phase, RayCluster, registered_checkpoints, submit

from t2ray.experiments.t2l import held_out_tasks
from t2ray.job import RECORD_NAME
from t2ray.svf import ExpertVector

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_node():
    cluster = RayCluster(cpus=2)
    try:
        cluster.start_head()
        yield cluster
    finally:
        cluster.stop()


def _svf_config(tmp_path, cache, **fields) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"svd_cache": str(cache.root), "prompts_per_step": 4,
                                    "eval_n": 4, "threads": 1, "lr": 0.1, "grad_clip": 1.0,
                                    **fields}))
    return path


@pytest.mark.timeout(1500)
def test_every_job_runs_through_ray_job_submit(one_node, tiny_random, tmp_path):
    model, cache = tiny_random
    py, m = sys.executable, str(model)
    svf = _svf_config(tmp_path, cache, eval_every=1)
    (tmp_path / "t2l.yaml").write_text(yaml.safe_dump(
        {"tasks": ["upper-word", "dashes-first"], "tasks_per_batch": 2, "examples_per_task": 1,
         "eval_tasks": 1, "eval_n": 2, "latent": 32, "head_in": 64, "threads": 1}))
    (tmp_path / "seen.yaml").write_text(yaml.safe_dump(
        {"svd_cache": str(cache.root), "prompts_per_step": 2, "eval_n": 2, "eval_every": 1,
         "threads": 1, "steps": 1}))
    out = {name: tmp_path / name for name in ("svd", "base", "svf", "t2l", "pretrain", "eval",
                                               "seen", "tune", "t2l_table", "unseen",
                                               "scaling")}
    jobs = {
        "decompose": ["--model", m, "--no-ray", "--out", str(out["svd"])],
        "eval_base": ["--model", m, "--tasks", "math", "--n", "2", "--out",
                      str(out["base"] / "rows.json")],
        "train_svf": ["--config", str(svf), "--model", m, "--task", "math", "--steps", "1",
                      "--workers", "1", "--out", str(out["svf"])],
        "train_t2l": ["--config", str(tmp_path / "t2l.yaml"), "--model", m, "--steps", "1",
                      "--out", str(out["t2l"])],
        "pretrain_base": ["--steps", "1", "--out", str(out["pretrain"])],
        "seen_results": ["--config", str(tmp_path / "seen.yaml"), "--model", m, "--tasks",
                         "math,code,reasoning", "--methods", "svf-rl", "--seeds", "0", "--steps", "1",
                         "--n-test", "2", "--out", str(out["seen"]), "--results",
                         str(out["seen"] / "results.json")],
        "scaling": ["--model", m, "--recipes", "svf-rl,t2l-sft", "--workers", "1,2", "--zero",
                    "none", "--steps", "2", "--out", str(out["scaling"]), "--doc",
                    str(out["scaling"] / "doc.md")],
    }
    for job, args in jobs.items():
        started = time.time()
        done = submit(one_node, [py, f"jobs/{job}.py", *args], timeout=600)
        assert done.returncode == 0 and "succeeded" in done.stdout, \
            f"{job}:\n{(done.stdout + done.stderr)[-3000:]}"
        print(f"{job}: {time.time() - started:.0f} s")
    # the adaptive evaluation reads an expert library: <category>/ folders
    shutil.copytree(out["svf"] / "expert", tmp_path / "experts" / "math")
    done = submit(one_node, [py, "jobs/eval_adaptive.py", "--model", m, "--experts",
                             str(tmp_path / "experts"), "--tasks", "math", "--strategy",
                             "none,expert", "--n-test", "2", "--out", str(out["eval"])])
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (tmp_path / "t2l_table.yaml").write_text(yaml.safe_dump(
        {"model": m, "tasks": held_out_tasks()[:1], "n_test": 2, "threads": 1}))
    for job, args in {
        "tune_seen": ["--config", str(tmp_path / "seen.yaml"), "--task", "math", "--method",
                      "svf-rl", "--grid", "steps=1", "--eval-n", "2", "--out", str(out["tune"])],
        "t2l_results": ["--config", str(tmp_path / "t2l_table.yaml"), "--methods", "base",
                        "--seeds", "0", "--out", str(out["t2l_table"]), "--results",
                        str(out["t2l_table"] / "results.json")],
        "unseen_results": ["--config", str(tmp_path / "seen.yaml"), "--seen", str(out["seen"]),
                           "--model", m, "--seeds", "0",
                           "--strategies", "none", "--n-test", "2", "--out",
                           str(out["unseen"]), "--tables", str(out["unseen"] / "tables"),
                           "--results", str(out["unseen"] / "results.json")],
    }.items():
        done = submit(one_node, [py, f"jobs/{job}.py", *args], timeout=600)
        assert done.returncode == 0, f"{job}:\n{(done.stdout + done.stderr)[-3000:]}"
    for name in out:
        record = yaml.safe_load((out[name] / RECORD_NAME).read_text())
        assert record["command"].startswith("t2ray "), name
    assert ExpertVector.load(out["svf"] / "expert", expect_fingerprint=cache.fingerprint)
    sweep = json.loads((out["scaling"] / "scaling.json").read_text())["rows"]
    assert [(r["recipe"], r["workers"]) for r in sweep] == [
        ("svf-rl", 1), ("svf-rl", 2), ("t2l-sft", 1), ("t2l-sft", 2)]
    assert all(r["steps"] == 1 and r["tokens_per_s"] > 0 for r in sweep)
    assert [r["grad_sync_bytes"] > 0 for r in sweep] == [False, True, False, True]
    assert (out["scaling"] / "scaling.png").stat().st_size > 0
    assert "| svf-rl-w2-ddp | svf-rl | 2 | none |" in (out["scaling"] / "doc.md").read_text()


STEPS = 30


@pytest.mark.timeout(1500)
def test_two_nodes_survive_losing_the_second_node(tiny_random, tmp_path):
    """A 2-worker SVF job spans both one-CPU nodes; the second node is SIGKILLed after two
    checkpoints, a replacement joins, and the job resumes from its latest checkpoint."""
    model, cache = tiny_random
    cluster = RayCluster(cpus=1)
    out = tmp_path / "svf"
    config = _svf_config(tmp_path, cache, checkpoint_every=1, eval_every=STEPS)
    try:
        cluster.start_head()
        cluster.start_node("node2")
        job = submit(cluster, [sys.executable, "jobs/train_svf.py", "--config", str(config),
                               "--model", str(model), "--task", "math", "--steps", str(STEPS),
                               "--workers", "2", "--max-failures", "1", "--out", str(out)],
                     wait=False)
        storage = out / "ray_train"
        explain = lambda: cluster.explain(job)  # noqa: E731
        phase = Phase("two registered checkpoints", 300, explain)
        while len(registered_checkpoints(storage)) < 2:
            cluster.check_job(job)
            phase.check()
            time.sleep(0.2)
        victims = cluster.kill_node("node2")
        # one CPU per node: a 2-worker group had to put a worker on the second node
        assert any("RayTrainWorker" in cmd for _, cmd in victims), victims
        phase = Phase("the head marking the node dead", 90, explain)
        while cluster.alive_nodes() != 1:
            phase.check()
            time.sleep(1)
        # The job cannot go on with one CPU (2 workers x 1 CPU, no elastic scaling): Ray Train
        # waits for the resources, and a replacement node brings them back.
        cluster.start_node("node2-replacement")
        status = cluster.wait_job(job, Phase("the job finishing", 600, explain))
        logs = cluster.job_logs(job)
        assert status == "SUCCEEDED", logs[-4000:]
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text()
                 .splitlines()]
        # resumed from a registered checkpoint, not from step 0
        assert steps[-1] == STEPS and steps[0] > 2, (steps, logs[-8000:])
        expert = ExpertVector.load(out / "expert", expect_fingerprint=cache.fingerprint)
        assert expert.task == "math"
    finally:
        cluster.stop()
