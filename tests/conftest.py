import os

import pytest

# Tests never touch the machine's global Ray state or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every module's Ray is a private loopback cluster; Ray reads the auth mode once per process, so
# it is set once here for all of them.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_model():
    from t2ray.models import load_model

    return load_model("tiny")


TINY_RANDOM_SHAPES = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1,
                          eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="session")
def tiny_random(tmp_path_factory):
    """A small random Llama saved with the character tokenizer, and its MLP SVD cache."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from t2ray.models import load_model
    from t2ray.models.tokenizer import build_char_tokenizer
    from t2ray.svf import decompose

    path = tmp_path_factory.mktemp("tiny-random")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**TINY_RANDOM_SHAPES)).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    cache = decompose(load_model(path)[0], "mlp", path / "svd", use_ray=False, progress=False)
    return path, cache
