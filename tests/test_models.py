"""Model loading: any HF causal LM by path (Llama, Mistral, Qwen2 built from configs), the
bundled `tiny` model, and the character tokenizer."""

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from t2ray.models import (
    TINY_DIR,
    base_model_info,
    count_parameters,
    load_model,
    resolve_model_path,
    weights_fingerprint,
)
from t2ray.models.tokenizer import build_char_tokenizer

SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@pytest.mark.parametrize("config_cls", [LlamaConfig, MistralConfig, Qwen2Config])
def test_load_random_hf_models_from_a_path(tmp_path, config_cls):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_cls(**SMALL))
    model.save_pretrained(tmp_path)
    build_char_tokenizer().save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path)
    assert type(loaded).__name__ == type(model).__name__
    ids = torch.tensor([tok("Q: 1+2\nA:")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert weights_fingerprint(model) == weights_fingerprint(loaded)
    assert tok.padding_side == "left"


def test_fingerprint_sees_a_changed_weight():
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL))
    before = weights_fingerprint(model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_fingerprint(model) != before


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("tiny", dtype="float8")
    with pytest.raises(OSError):
        load_model(tmp_path / "missing")


def test_char_tokenizer_roundtrip_and_template(tmp_path):
    tok = build_char_tokenizer()
    text = 'def f(x):\n    return x * 3  # {"a": [1]} ~'
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok(text)["input_ids"]) == len(text)  # one token per character
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt = reloaded.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos>Be brief.\nQ: 2+2?\nA: "


def test_bundled_tiny_model():
    assert resolve_model_path("tiny") == str(TINY_DIR)
    weights = TINY_DIR / "model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    cfg = json.loads((TINY_DIR / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["head_dim"] in (32, 64)  # what vLLM's CPU attention accepts
    assert (TINY_DIR / "tokenizer.json").exists()
    info = base_model_info("tiny")
    model, tok = load_model("tiny")
    assert info["parameters"] == count_parameters(model) > 1_000_000
    assert info["fingerprint"] == weights_fingerprint(model)
    assert tok.chat_template and tok.eos_token == "<eos>"
