"""T2L hypernetwork: shapes from a config alone, the paper's parameter counts, batching."""

import json

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, MistralConfig

from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, count_trainable, lora_targets

MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
PAPER = {"L": 55.4e6, "M": 34.4e6, "S": 5.0e6}


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_mistral_7b_counts_match_the_paper(variant):
    n_layers, modules = lora_targets(MistralConfig(**MISTRAL_7B), ["q_proj", "v_proj"])
    assert modules == {"q_proj": (4096, 4096), "v_proj": (4096, 1024)} and n_layers == 32
    with torch.device("meta"):  # no memory for 55M parameters
        net = HyperLoRA(HyperConfig(variant, n_layers, modules, rank=8, encoder_dim=1024))
    assert abs(count_trainable(net) - PAPER[variant]) / PAPER[variant] < 0.01


def small(variant: str) -> HyperLoRA:
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    n, modules = lora_targets(cfg.to_dict(), ["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(0)
    return HyperLoRA(HyperConfig(variant, n, modules, rank=4, encoder_dim=16, latent=16,
                                 head_in=24)).eval()


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_one_forward_gives_every_layer_and_module_and_batches_agree(variant):
    net = small(variant)
    emb = torch.randn(3, 16)
    out = net(emb)
    want = {"q_proj": (32, 32), "v_proj": (32, 16), "down_proj": (48, 32)}
    assert set(out) == set(want)
    for name, (fan_in, fan_out) in want.items():
        a, b = out[name]
        assert a.shape == (3, 3, 4, fan_in) and b.shape == (3, 3, fan_out, 4)
    for i in range(3):  # a batch of descriptions equals one at a time
        single = net(emb[i : i + 1])
        for name in want:
            torch.testing.assert_close(single[name][0][0], out[name][0][i])
            torch.testing.assert_close(single[name][1][0], out[name][1][i])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="variant"):
        HyperConfig("XL", 2, {"q_proj": (4, 4)})
    with pytest.raises(ValueError, match=r"matches the targets \['qkv'\]"):
        lora_targets(MistralConfig(**MISTRAL_7B), ["qkv"])
    with pytest.raises(ValueError, match="model_type"):
        lora_targets(MISTRAL_7B, ["q_proj"])
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=4)  # c_proj: attention's and the MLP's
    with pytest.raises(ValueError, match="once per layer with one shape"):
        lora_targets(gpt2, ["c_proj"])
    with pytest.raises(ValueError, match="embeddings"):
        small("L")(torch.randn(2, 15))
    json.dumps(HyperConfig("M", 2, {"q_proj": (4, 4)}).as_dict())
