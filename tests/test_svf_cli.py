"""`t2ray svf ...`: the checked command-line contract, on configs and tiny random models."""

import json

import torch
from test_cli import run
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from t2ray.models.tokenizer import build_char_tokenizer
from t2ray.svf import ExpertVector, SVDCache, SVFParam

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256}
SHAPES = dict(vocab_size=100, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def test_params_from_a_config_alone(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA3_8B))
    mlp = json.loads(run("svf", "params", "--config", str(path), "--targets", "mlp",
                         "--json").stdout)
    assert mlp["svf"] == 393_216 and mlp["lora_r16_qv"] == 6_815_744
    attn = json.loads(run("svf", "params", "--config", str(path), "--targets", "attn",
                          "--json").stdout)
    assert attn["svf"] == 163_840


def save_model(path, config_cls, seed):
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config_cls(**SHAPES)).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)


def test_decompose_info_and_transfer(tmp_path):
    save_model(tmp_path / "llama", LlamaConfig, 0)
    save_model(tmp_path / "mistral", MistralConfig, 1)
    run("svf", "decompose", "--model", str(tmp_path / "llama"), "--targets", "mlp",
        "--out", str(tmp_path / "svd"), "--no-ray")
    info = json.loads(run("svf", "info", str(tmp_path / "svd"), "--json").stdout)
    assert info["kind"] == "svd-cache" and info["matrices"] == 6
    assert info["svf_params"] == 2 * 3 * 48 and info["max_recon_error"] < 1e-5

    cache = SVDCache(tmp_path / "svd")
    z = {n: torch.randn(r) for n, r in cache.ranks().items()}
    ExpertVector.for_cache(cache, z, SVFParam("reference"), task="math").save(tmp_path / "e")
    expert_info = json.loads(run("svf", "info", str(tmp_path / "e"), "--json").stdout)
    assert expert_info["kind"] == "svf-expert" and expert_info["params"] == 288

    run("svf", "transfer", str(tmp_path / "e"), "--to", str(tmp_path / "mistral"),
        "--out", str(tmp_path / "moved"), "--cache", str(tmp_path / "svd-mistral"))
    moved = ExpertVector.load(tmp_path / "moved")
    assert moved.base_fingerprint == SVDCache(tmp_path / "svd-mistral").fingerprint
    assert moved.base_fingerprint != cache.fingerprint

    proc = run("svf", "info", str(tmp_path), check=False)
    assert proc.returncode != 0 and "no manifest.json" in proc.stderr
