"""Per-step training metrics (t2ray.distributed.metrics), their export to a Ray node's Prometheus
endpoint, the Grafana dashboard that reads them, and the scaling sweep's arithmetic.
The sweep itself runs through `ray job submit` in tests/test_cluster_ops.py."""

import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from t2ray.distributed.metrics import GAUGES, StepMeter, grad_sync_bytes, rank_memory_bytes
from t2ray.eval.results import replace_section
from t2ray.experiments.scaling import ScalingConfig, markdown_table, run_name, summarise, with_efficiency

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "cluster" / "grafana-t2ray-training.json"


def test_one_rank_measures_its_step():
    params = [torch.nn.Parameter(torch.zeros(10, 3)), torch.nn.Parameter(torch.zeros(5))]
    stats = {}
    StepMeter(params, rank=0, world=1).measure(stats, seconds=0.5, tokens=200)
    assert stats["step_time_s"] == 0.5
    assert stats["tokens_per_s"] == stats["global_tokens_per_s"] == 400.0
    assert stats["grad_sync_bytes"] == 0  # nothing to synchronise alone
    assert stats["rank_memory_bytes"] == stats["max_rank_memory_bytes"] > 0


def test_a_step_without_tokens_has_no_throughput():
    stats = {}
    StepMeter([], rank=0, world=1).measure(stats, seconds=1.0, tokens=None)
    assert "tokens_per_s" not in stats and stats["step_time_s"] == 1.0


def test_gradient_sync_bytes_count_every_trainable_element_in_fp32():
    z = [torch.nn.Parameter(torch.zeros(64)), torch.nn.Parameter(torch.zeros(32))]
    assert grad_sync_bytes(z, world=2) == 96 * 4
    partitioned = torch.nn.Parameter(torch.zeros(0))  # a ZeRO-3 shard between forwards
    partitioned.ds_numel = 1000
    assert grad_sync_bytes([partitioned], world=4) == 4000


def test_peak_memory_sees_a_large_allocation():
    before = rank_memory_bytes()
    block = torch.ones(64 * 2**20 // 4 + before // 4)  # more than the peak so far, touched
    assert rank_memory_bytes() >= block.numel() * 4
    del block


def _two_ranks(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        meter = StepMeter([torch.nn.Parameter(torch.zeros(7))], rank, world=2)
        stats = {}
        # each rank its own tokens: the global rate sums them over the step's time
        meter.measure(stats, seconds=2.0, tokens=100 * (rank + 1))
        results[rank] = stats
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_tokens_and_take_the_largest_memory():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_two_ranks, args=(port, results), nprocs=2, join=True)
    assert results[0]["tokens_per_s"] == 50.0 and results[1]["tokens_per_s"] == 100.0
    assert results[0]["global_tokens_per_s"] == results[1]["global_tokens_per_s"] == 150.0
    peak = max(results[r]["rank_memory_bytes"] for r in (0, 1))
    assert results[0]["max_rank_memory_bytes"] == results[1]["max_rank_memory_bytes"] == peak
    assert results[0]["grad_sync_bytes"] == 28


def _point(recipe, workers, zero, step_times, tokens):
    history = [{"step": i + 1, "step_time_s": t, "global_tokens_per_s": tokens / t,
                "grad_sync_bytes": 0 if workers == 1 else 4096,
                "max_rank_memory_bytes": 1000 + i} for i, t in enumerate(step_times)]
    return {"run": run_name(recipe, workers, zero), "recipe": recipe, "workers": workers,
            "zero": zero, "history": history}


def test_the_sweep_table_holds_medians_speedup_and_efficiency():
    rows = with_efficiency([
        summarise(_point("svf-rl", 1, None, [9.0, 2.0, 2.2, 1.8], tokens=400), warmup=1),
        summarise(_point("svf-rl", 2, None, [9.0, 1.25, 1.25, 1.25], tokens=400), warmup=1),
        summarise(_point("svf-rl", 2, 3, [9.0, 1.0, 1.0], tokens=100), warmup=1),
    ])
    one, two, zero3 = rows
    assert one["steps"] == 3 and one["step_time_s"] == 2.0  # warm-up step left out
    assert one["tokens_per_s"] == pytest.approx(200.0)
    assert two["speedup"] == pytest.approx(320 / 200) and two["efficiency"] == pytest.approx(0.8)
    assert zero3["speedup"] == zero3["efficiency"] == 1.0  # its own stage is its reference
    assert one["max_rank_memory_bytes"] == 1003
    table = markdown_table(rows)
    assert "| svf-rl-w2-ddp | svf-rl | 2 | none | 1.25 | 320 | 1.60x | 0.80 | 4.1 kB |" in table
    assert "| svf-rl-w2-zero3 | svf-rl | 2 | 3 |" in table


def test_a_run_with_only_warmup_steps_is_refused():
    with pytest.raises(ValueError, match="no measured steps"):
        summarise(_point("t2l-sft", 1, None, [1.0], tokens=10), warmup=1)


@pytest.mark.parametrize("fields, message", [
    ({"recipes": ["svf-sft"]}, "unknown recipes"),
    ({"workers": [0, 1]}, "workers must be >= 1"),
    ({"zero": [4]}, "zero stages"),
    ({"steps": 1, "warmup": 1}, "must exceed warmup"),
    ({"workers": [1, 3]}, "must divide by every worker count"),
])
def test_bad_sweeps_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ScalingConfig(**fields).validate()


def test_a_marked_section_is_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "scaling.md"
    doc.write_text("# Scaling\n\nwritten by people\n")
    replace_section(doc, "scaling-runs", "first")
    replace_section(doc, "scaling-runs", "second")
    text = doc.read_text()
    assert text.startswith("# Scaling\n\nwritten by people\n")
    assert "second" in text and "first" not in text and text.count(":start -->") == 1


def test_the_dashboard_plots_every_exported_metric_and_nothing_else():
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bray_t2ray_\w+", e)}
    assert used == {f"ray_{name}" for name, _ in GAUGES.values()}
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "run"} <= variables
    assert all("$run" in e for e in exprs)  # every panel follows the run picker
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gauges_reach_the_nodes_prometheus_endpoint():
    """What the dashboard's Metrics view reads: the node's metrics agent exports a worker's
    gauges as ray_t2ray_train_* with run and rank tags (about 10 s after they are set)."""
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray.is_initialized():
        pytest.fail("a Ray instance is already initialised in this process")
    ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="t2ray-ray-", dir="/tmp"))
    try:
        @ray.remote
        def step(seconds: float) -> None:
            meter = StepMeter([], rank=0, world=1, run="probe-w1-ddp")
            meter.measure({"loss": 2.5}, seconds=seconds, tokens=300)
            time.sleep(40)  # the process keeps its gauges while the agent exports them

        pending = step.remote(1.5)
        wanted = {"ray_t2ray_train_step_time_s": 1.5, "ray_t2ray_train_tokens_per_s": 200.0,
                  "ray_t2ray_train_grad_sync_bytes": 0.0}
        seen, deadline = {}, time.time() + 60
        while len(seen) < len(wanted) and time.time() < deadline:
            time.sleep(2)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            for line in text.decode().splitlines():
                name = line.split("{", 1)[0]
                if name in wanted and 'run="probe-w1-ddp"' in line and 'rank="0"' in line:
                    seen[name] = float(line.rsplit(" ", 1)[1])
        assert seen == wanted
        ray.cancel(pending, force=True)
    finally:
        ray.shutdown()


def _run_all():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_make_bench_runs_every_benchmark_script():
    run_all = _run_all()
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"report", "run_all"}
    assert {b.script for b in run_all.BENCHMARKS} == scripts
    assert "bench/run_all.py" in (ROOT / "Makefile").read_text()


def test_a_benchmark_that_cannot_run_here_is_skipped_not_failed(monkeypatch):
    run_all = _run_all()
    absent = run_all.Benchmark("x", needs=("no_such_module_here",))
    assert run_all.command(absent) is None and run_all.missing(absent) == ["no_such_module_here"]
    monkeypatch.setattr(run_all.torch.cuda, "is_available", lambda: False)
    gpu = run_all.Benchmark("gpu_paths", ("--layers", "4"), gpu=True, cpu_args=("--smoke",))
    assert run_all.command(gpu)[-1] == "--smoke"
    assert run_all.command(run_all.Benchmark("y", gpu=True)) is None


def test_training_devices_are_named_and_a_missing_gpu_is_a_clear_error(monkeypatch):
    from t2ray.distributed.loop import train_device
    from t2ray.rl.trainer import TrainConfig
    from t2ray.t2l.train import T2LTrainConfig

    assert train_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        train_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no GPU"):
        train_device("cuda")
    with pytest.raises(ValueError, match="ZeRO-3 is not supported yet"):
        TrainConfig(svd_cache="x", device="cuda", deepspeed_stage=3).validate()
    with pytest.raises(ValueError, match="variant Z"):
        T2LTrainConfig(device="cuda", variant="Z").validate()
    with pytest.raises(ValueError, match="leave 3 out of zero"):
        ScalingConfig(device="cuda", zero=[None, 3]).validate()
    with pytest.raises(ValueError, match="device must be one of"):
        ScalingConfig(device="gpu").validate()


def test_a_cuda_config_asks_ray_train_for_a_gpu_per_worker(monkeypatch, tmp_path):
    from t2ray.distributed import train as launcher
    from t2ray.rl.trainer import TrainConfig

    asked = {}
    monkeypatch.setattr(launcher, "run_on_ray", lambda fn, config, workers, name,
                        storage_path, use_gpu, **kw: asked.update(use_gpu=use_gpu) or {})
    monkeypatch.setattr("t2ray.distributed.ray_env.ensure_ray", lambda **kw: None)
    launcher.launch(lambda c: {}, TrainConfig(out=str(tmp_path), device="cuda"), workers=2)
    assert asked == {"use_gpu": True}
    launcher.launch(lambda c: {}, TrainConfig(out=str(tmp_path)), workers=2)
    assert asked == {"use_gpu": False}


def test_a_finished_point_is_reused_only_with_the_same_settings(monkeypatch, tmp_path):
    from dataclasses import asdict

    import yaml

    from t2ray.experiments import scaling

    cfg = ScalingConfig(out=str(tmp_path), recipes=["t2l-sft"])
    out = tmp_path / run_name("t2l-sft", 2, None)
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "step_time_s": 1.0}) + "\n")
    settings = asdict(scaling._t2l_config(cfg, out, None, 2))
    (out / "train_config.yaml").write_text(yaml.safe_dump(settings))
    trained = []
    monkeypatch.setattr("t2ray.t2l.train.train_t2l", lambda config, workers, max_failures:
                        trained.append(config) or {"history": [{"step": 1, "fresh": True}]})
    kept = scaling.run_point(cfg, "t2l-sft", 2, None, None)
    assert kept["history"] == [{"step": 1, "step_time_s": 1.0}] and not trained
    # a record from before a field existed: the field counts at its default, the run is reused
    del settings["device"]
    (out / "train_config.yaml").write_text(yaml.safe_dump(settings))
    assert scaling.run_point(cfg, "t2l-sft", 2, None, None)["history"] == kept["history"]
    settings["grad_clip"] = 7.0  # a recorded value that differs from the run asked for
    (out / "train_config.yaml").write_text(yaml.safe_dump(settings))
    assert scaling.run_point(cfg, "t2l-sft", 2, None, None)["history"][0]["fresh"]
    trained.clear()
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(scaling._t2l_config(
        cfg, out, None, 2))))
    cfg.steps = 12  # another setting: the point runs again
    assert scaling.run_point(cfg, "t2l-sft", 2, None, None)["history"][0]["fresh"]
    assert trained[0].steps == 12 and trained[0].tasks_per_batch == 4
