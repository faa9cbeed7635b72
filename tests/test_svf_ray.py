"""Decomposition as parallel Ray tasks gives the same cache as in-process."""

import pytest
import torch
from ray_local import local_ray  # noqa: F401
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.svf import decompose

pytestmark = pytest.mark.slow


def test_ray_decomposition_matches_in_process(local_ray, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    via_ray = decompose(model, "all", tmp_path / "ray", progress=False)  # Ray is up: tasks
    local = decompose(model, "all", tmp_path / "local", use_ray=False, progress=False)
    assert via_ray.fingerprint == local.fingerprint
    for name in local.matrices:
        for a, b in zip(via_ray.factors(name), local.factors(name)):
            assert torch.allclose(a, b, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.safetensors")) == [
        "layer-00000.safetensors", "layer-00001.safetensors", "layer-00002.safetensors"]
