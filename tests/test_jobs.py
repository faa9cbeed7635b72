"""jobs/: every entry point is a thin call of one `t2ray` command in job mode; `--config YAML`
gives options, relative outputs are refused (or put under T2RAY_RUNS_DIR) inside a Ray job, and
the resolved options are written beside the outputs."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.cli import app
from t2ray.job import RAY_JOB_ENV, RECORD_NAME, RUNS_DIR_ENV, option_defaults, resolve_outputs
from t2ray.models.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.py"))


def job_command(path: Path) -> list[str]:
    """The command words a job script passes to `main(..., job=True)`."""
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "main"]
    assert len(calls) == 1, f"{path.name} should call main once"
    (call,) = calls
    assert any(k.arg == "job" and k.value.value is True for k in call.keywords), path.name
    return [e.value for e in call.args[0].elts if isinstance(e, ast.Constant)]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_runs_one_command_in_job_mode(path):
    command = typer.main.get_command(app)
    for word in job_command(path):
        if not hasattr(command, "commands"):
            break  # the rest are the job's fixed options
        assert word in command.commands, f"{path.name}: no command {word!r}"
        command = command.commands[word]
    assert not hasattr(command, "commands"), f"{path.name} names a group, not a command"


def test_job_entry_points_cover_the_pipeline():
    names = {p.stem for p in JOBS}
    assert {"decompose", "eval_adaptive", "eval_base", "train_svf", "train_t2l"} <= names


def test_option_file_is_checked_before_work(tmp_path):
    command = typer.main.get_command(app).commands["base"].commands["eval"]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"tasks": ["math", "code"], "split": "validation"}))
    assert option_defaults(command, good) == {"tasks": "math,code", "split": "validation"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"taks": "math"}))
    with pytest.raises(ValueError, match="unknown option 'taks'"):
        option_defaults(command, bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        option_defaults(command, tmp_path / "missing.yaml")


def test_outputs_inside_a_ray_job(monkeypatch, tmp_path):
    params = {"out": Path("runs/x"), "results": None, "n": 2}
    assert resolve_outputs(params) == params  # outside a Ray job nothing changes
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    monkeypatch.delenv(RUNS_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="--out runs/x is relative"):
        resolve_outputs(params)
    assert resolve_outputs({**params, "out": tmp_path}) == {**params, "out": tmp_path}
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path))
    assert resolve_outputs(params)["out"] == tmp_path / "runs" / "x"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "llama"
    torch.manual_seed(0)
    shapes = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    AutoModelForCausalLM.from_config(LlamaConfig(**shapes)).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return path


def run_job(script: str, *args: str, env: dict | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_decompose_job_takes_a_config_file_and_records_it(tmp_path, small_model):
    config = tmp_path / "decompose.yaml"
    config.write_text(yaml.safe_dump({"model": str(small_model), "targets": "mlp",
                                      "ray": False}))
    out = tmp_path / "svd"
    proc = run_job("decompose.py", "--config", str(config), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = yaml.safe_load((out / RECORD_NAME).read_text())
    assert record["command"] == "t2ray svf decompose"
    assert record["options"]["model"] == str(small_model) and record["options"]["targets"] == "mlp"
    assert "t2ray svf decompose: " in proc.stdout and (out / "manifest.json").exists()


def test_a_ray_job_refuses_a_relative_output_before_any_work(tmp_path, small_model):
    proc = run_job("decompose.py", "--model", str(small_model), "--no-ray", "--out", "runs/svd",
                   env={RAY_JOB_ENV: "{}", RUNS_DIR_ENV: ""}, cwd=tmp_path)
    assert proc.returncode == 2 and "--out runs/svd is relative" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = run_job("decompose.py", "--model", str(small_model), "--no-ray", "--out", "svd",
                   env={RAY_JOB_ENV: "{}", RUNS_DIR_ENV: str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "svd" / RECORD_NAME).exists()


def test_a_config_file_keeps_its_fields_unless_an_option_is_given(tmp_path):
    from t2ray.cli import _configured
    from t2ray.rl.trainer import TrainConfig
    from t2ray.t2l.train import T2LTrainConfig

    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": "some/model", "task": "code", "deepspeed_stage": 3,
                                    "steps": 7}))
    cfg = _configured(TrainConfig, path, policy="svf", model=None, task=None, steps=2,
                      deepspeed_stage=None)
    assert (cfg.model, cfg.task, cfg.deepspeed_stage, cfg.steps) == ("some/model", "code", 3, 2)
    assert _configured(T2LTrainConfig, None, variant=None, seed=None).variant == "M"
