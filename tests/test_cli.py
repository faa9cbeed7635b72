"""The command-line contract, run as a user runs it (a subprocess of the installed script)."""

import json
import shutil
import subprocess
import sys

import pytest

from t2ray.tasks import get_task

T2RAY = shutil.which("t2ray") or str(__import__("pathlib").Path(sys.executable).parent / "t2ray")


def run(*args: str, check: bool = True, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([T2RAY, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"t2ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_help_lists_the_commands():
    out = run("--help").stdout
    for cmd in ("tasks", "base", "demo"):
        assert cmd in out


def test_tasks_list_json():
    rows = json.loads(run("tasks", "list", "--json").stdout)  # the default suite: v2
    names = {r["name"] for r in rows}
    assert {"math", "code", "reasoning", "math-hard", "code-hard", "reasoning-hard"} <= names
    for r in rows:
        assert {"name", "family", "split_sizes", "n_descriptions", "distinct"} <= set(r)
    grid = [r for r in rows if r["family"] == "instruct"]
    assert len(grid) == 60 and sum(not r["seen"] for r in grid) >= 12
    assert all(r["n_descriptions"] >= 30 and r["cell"] and r["tag"] for r in grid)
    assert all(r["distinct"] == r["split_sizes"] for r in rows if r["group"] != "route")
    v1 = json.loads(run("tasks", "list", "--json", "--suite", "v1").stdout)
    assert sum(r["family"] == "instruct" for r in v1) >= 100
    # v1 draws repeat contents: the code test split holds few distinct (operation, constant)
    code = next(r for r in v1 if r["name"] == "code")
    assert code["distinct"]["test"] < code["split_sizes"]["test"]


def test_tasks_sample_json():
    rows = json.loads(run("tasks", "sample", "reasoning", "-n", "3", "--split", "test",
                          "--json").stdout)
    assert len(rows) == 3 and all(r["task"] == "reasoning" for r in rows)
    assert rows[0]["answer"] in "ABCD"


@pytest.mark.parametrize("args,message", [
    (("tasks", "sample", "nope"), "unknown task 'nope'"),
    (("tasks", "sample", "math", "--split", "nope"), "unknown split 'nope'"),
    (("base", "info", "--model", "/nonexistent/model"), "no model at /nonexistent/model"),
    (("svf", "info", "/"), "is not an SVD cache or an SVF expert"),
    (("eval", "--experts", "/nope", "--strategy", "magic"), "unknown strategies ['magic']"),
])
def test_user_errors_are_one_line_without_a_traceback(args, message, tmp_path):
    """A mistake a user can make ends with one line naming the problem (exit 2)."""
    proc = run(*args, check=False, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    debug = run("--debug", "tasks", "sample", "nope", check=False, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "nope" in debug.stderr


def test_base_info_json():
    info = json.loads(run("base", "info", "--json").stdout)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] > 1_000_000 and info["weights_bytes"] <= 20 * 2**20
    assert info["head_dim"] == 64


def test_base_eval_json_small():
    rows = json.loads(run("base", "eval", "--tasks", "math,reasoning", "--split", "test",
                          "--n", "16", "--json").stdout)
    assert [r["task"] for r in rows] == ["math", "reasoning"]
    assert all(r["n"] == 16 and 0 <= r["accuracy"] <= 1 for r in rows)


def test_base_eval_prefill_forces_the_answers_start():
    """A forced "The answer is A." is scored as the letter A on every item (the worked-form
    check forces 'A=' and 'The answer is ' this way)."""
    from t2ray.tasks import get_task

    rows = json.loads(run("base", "eval", "--tasks", "reasoning", "--split", "validation",
                          "--n", "24", "--prefill", "The answer is A.", "--json").stdout)
    gold = [e.answer for e in get_task("reasoning").examples("validation", 24)]
    assert rows[0]["correct"] == gold.count("A") and 0 < gold.count("A") < 24


def test_base_eval_v2_instruction_family_bare_description_and_tag():
    rows = json.loads(run("base", "eval", "--tasks", "math,reverse-word", "--suite", "v2",
                          "--n", "4", "--json").stdout)
    assert [(r["task"], r["method"]) for r in rows] == [
        ("math", "base"), ("reverse-word", "base"), ("reverse-word", "base+desc"),
        ("reverse-word", "base+tag")]
    assert all(r["interval"] == "wilson" and r["distinct"] == 4 for r in rows)


def test_demo_small(tmp_path):
    proc = run("demo", "--base-only", "--n", "4", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "base_eval.json").read_text())
    assert [r["task"] for r in rows][:6] == ["math", "code", "reasoning", "math-hard", "code-hard",
                                             "reasoning-hard"]
    assert rows[-1]["task"].startswith("instruct-heldout") and rows[-1]["n"] == 12 * 4
    assert "bundled base model" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_pipeline_smoke_preset_end_to_end_and_reuses_artifacts(tmp_path):
    """Every stage of `make demo` (train, route, few-shot on Ray Tune, tables) on a tiny preset."""
    first = run("demo", "--preset", "smoke", "--out", str(tmp_path / "first"), cwd=tmp_path,
                timeout=900)
    # it ends with one live request per strategy to the serving graph (it raises on a failure)
    assert "live requests to http://127.0.0.1:" in first.stdout
    assert "the full tables" in first.stdout and "docs/results.md" in first.stdout
    for adaptation in ("classifier", "fewshot:math-hard", "lora:code", "t2l:Sort"):
        assert adaptation in first.stdout
    result = json.loads((tmp_path / "first" / "demo_results.json").read_text())
    seen, unseen = result["tables"]["seen"], result["tables"]["unseen"]
    assert {(r["task"], r["method"]) for r in seen} == {
        (t, m) for t in ("math", "code", "reasoning") for m in ("base", "lora-rl", "svf-rl")}
    assert {r["method"] for r in unseen} == {"base", "lora-rl", "prompt", "classifier", "fewshot"}
    assert {r["task"] for r in unseen} == {"math-hard", "code-hard", "reasoning-hard",
                                           "unseen-mean"}
    assert {r["method"] for r in unseen if r["task"] == "unseen-mean"} == {
        "base", "prompt", "classifier", "fewshot"}  # the strategies scored on every family
    assert (tmp_path / "first" / "unseen" / "alpha.png").stat().st_size > 0
    t2l = result["tables"]["t2l"]
    from t2ray.experiments.demo import T2L_CONFIG
    from t2ray.experiments.t2l import T2LTableConfig

    chosen = T2LTableConfig.from_yaml(T2L_CONFIG).chosen_sft
    assert [r["method"] for r in t2l] == ["base", chosen] and not get_task(t2l[0]["task"]).seen
    from peft import LoraConfig

    LoraConfig.from_pretrained(str(tmp_path / "first" / "t2l_adapter"))  # PEFT reads it
    again = run("demo", "--preset", "smoke", "--out", str(tmp_path / "second"), cwd=tmp_path,
                timeout=900)
    assert again.stdout.count("reusing") >= 8  # 4 experts, 3 LoRAs and the T2L: none retrained


@pytest.mark.parametrize("variant,paper", [("L", 55.4e6), ("M", 34.4e6), ("S", 5.0e6)])
def test_t2l_params_for_mistral_7b_shapes(tmp_path, variant, paper):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mistral", "hidden_size": 4096,
                                  "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8}))
    info = json.loads(run("t2l", "params", "--config", str(config), "--variant", variant,
                          "--rank", "8", "--targets", "q_proj,v_proj", "--encoder-dim", "1024",
                          "--json").stdout)
    assert abs(info["trainable"] - paper) / paper < 0.01


def test_deepspeed_training_runs_from_outside_the_checkout(tmp_path):
    """The ZeRO configs ship inside the package: an installed t2ray finds them from any
    directory, and an in-process run (`--workers 0`) gets its own one-rank process group."""
    config = tmp_path / "train.yaml"
    config.write_text("prompts_per_step: 2\neval_n: 4\nsamples_per_prompt: 1\n")
    out = tmp_path / "run"
    run("svf", "train", "--task", "math", "--workers", "0", "--deepspeed-stage", "2",
        "--steps", "2", "--config", str(config), "--out", str(out), cwd=tmp_path, timeout=600)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and (out / "expert" / "manifest.json").exists()
