"""`t2ray plan`: per-GPU memory from a config alone, against hand-computed anchors and against
the factors a real decomposition stores."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.distributed.plan import PlanRequest, memory_plan
from t2ray.svf.cache import decompose
from t2ray.svf.targets import count_svf_params

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"
LLAMA_8B = MODELS / "llama-3.1-8b-instruct" / "config.json"
LLAMA_70B = MODELS / "llama-3-70b-instruct" / "config.json"


def plan_of(path: Path, **request) -> dict:
    return memory_plan(json.loads(path.read_text()), PlanRequest(**request))


@pytest.mark.parametrize("path, hidden, inter, layers, base_gb", [
    (LLAMA_8B, 4096, 14336, 32, 16.06), (LLAMA_70B, 8192, 28672, 80, 141.1)])
def test_factor_and_z_sizes_match_the_hand_computed_anchors(path, hidden, inter, layers, base_gb):
    plan = plan_of(path, gpus=8, tp=8)
    per_matrix = hidden * (inter + hidden + 1)  # U (out x r), sigma, V^T (r x in); r = hidden
    assert plan["svd_factor_values"] == 3 * layers * per_matrix
    assert plan["svd_factor_bytes"] == 2 * plan["svd_factor_values"]  # bf16
    assert plan["target_weight_values"] == 3 * layers * hidden * inter
    assert plan["z_values"] == 3 * layers * hidden and plan["z_bytes"] == 4 * plan["z_values"]
    assert plan["z_values"] == count_svf_params(json.loads(path.read_text()), "mlp")
    assert plan["factor_to_target_weights"] == pytest.approx(1.29, abs=0.005)
    assert plan["base_weight_bytes"] / 1e9 == pytest.approx(base_gb, abs=0.05)


def test_anchor_values_for_llama_3_70b():
    plan = plan_of(LLAMA_70B, gpus=8, tp=8)
    assert plan["svd_factor_values"] / 1e9 == pytest.approx(72.5, abs=0.05)
    assert plan["svd_factor_bytes"] / 1e9 == pytest.approx(145, abs=0.1)
    assert plan["z_values"] == 1_966_080 and plan["z_bytes"] / 1e6 == pytest.approx(7.9, abs=0.05)


def test_zero_stages_and_the_engine_per_rank():
    plan = plan_of(LLAMA_70B, gpus=8, tp=2)
    base, factors, z = plan["base_weight_bytes"], plan["svd_factor_bytes"], plan["z_bytes"]
    t = plan["training"]
    assert t["zero0"]["total"] == base + factors + 4 * z  # z, its gradient, Adam's two moments
    assert t["zero1"]["optimizer"] == 2 * z // 8 and t["zero1"]["gradients"] == z
    assert t["zero2"]["gradients"] == z // 8
    assert t["zero3"]["base_weights"] == base // 8 and t["zero3"]["z"] == z  # z stays whole
    # today the factors are buffers: every rank holds all of them, and 70B does not fit
    assert t["zero3"]["svd_factors"] == factors and not t["zero3"]["fits"]
    assert t["zero3"]["svd_factors_partitioned"] == factors // 8
    assert t["zero3"]["fits_factors_partitioned"]
    # TP=2: gate/up keep half their U rows and all V^T, down all U and half its V^T columns
    share = (8192 * (14336 + 8192 + 1)) / (8192 * (28672 + 8192 + 1))
    assert plan["engine"]["svd_factor_share"] == pytest.approx(share)
    assert plan["engine"]["base_weights"] == base // 2
    assert plan["engine"]["kv_bytes_per_token"] == 2 * 80 * 4 * 128 * 2  # 8 kv heads over 2
    assert not plan["engine"]["fits"]  # 70B weights / 2 + factor slices exceed 80 GB


def test_factor_count_equals_what_a_decomposition_stores(tmp_path):
    shapes = dict(vocab_size=100, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shapes))
    cache = decompose(model, "all", tmp_path / "svd", use_ray=False)
    stored = sum(t.numel() for name in cache.matrices for t in cache.factors(name))
    config = {"model_type": "llama", **shapes}
    plan = memory_plan(config, PlanRequest(gpus=2, targets="all", tp=2))
    assert plan["svd_factor_values"] == stored
    assert plan["base_values"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("change, message", [
    (dict(config={"model_type": "vit"}), "not a causal language model"),
    (dict(config={"hidden_size": 8}), "model_type"),
    (dict(targets="nope_proj"), "nope_proj"),
    (dict(gpus=0), "gpus"),
    (dict(tp=3), "num_attention_heads"),
    (dict(dtype="int3"), "dtype"),
])
def test_bad_input_names_the_field(change, message):
    config = change.pop("config", json.loads(LLAMA_8B.read_text()))
    request = {"gpus": 4, **change}
    with pytest.raises(ValueError, match=message):
        memory_plan(config, PlanRequest(**request))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`t2ray ARGS` in this process: exit code, stdout, stderr."""
    from t2ray.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def test_cli_json_and_errors(capsys):
    code, out, _ = cli(capsys, "plan", "--config", str(LLAMA_70B), "--gpus", "8", "--tp", "8",
                       "--zero", "3", "--json")
    plan = json.loads(out)
    assert code == 0 and list(plan["training"]) == ["zero3"] and plan["z_values"] == 1_966_080
    assert {"svd_factor_bytes", "z_values", "engine"} <= set(plan)
    code, out, _ = cli(capsys, "plan", "--config", str(LLAMA_8B), "--gpus", "2")
    assert code == 0 and "zero0" in out and "buffers" in out
    code, _, err = cli(capsys, "plan", "--config", str(LLAMA_8B), "--gpus", "4", "--tp", "3")
    assert code == 2 and "num_attention_heads" in err
