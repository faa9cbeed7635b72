"""T2L generation: one batched forward per batch of descriptions, checkpoints, and adapters that
PEFT loads with the logits of our functional path."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from t2ray.artifacts import ArtifactError
from t2ray.lora import batched_lora, export_peft
from t2ray.t2l.generate import T2LCheckpoint
from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, lora_targets

SHAPES = dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=64)


class FakeEncoder:
    """A deterministic stand-in for the sentence encoder (the encoder has its own tests)."""

    name, dim = "fake", 12

    def encode(self, descriptions):
        from t2ray.t2l.encoder import check_description

        return torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(
            sum(map(ord, check_description(d))))) for d in descriptions])


@pytest.fixture(scope="module")
def checkpoint():
    config = LlamaConfig(**SHAPES)
    n, modules = lora_targets(config.to_dict(), ["q_proj", "v_proj"])
    torch.manual_seed(0)
    net = HyperLoRA(HyperConfig("M", n, modules, rank=4, encoder_dim=12, latent=16,
                                head_in=20)).eval()
    return T2LCheckpoint(net, "fake", lora_alpha=8.0, use_rslora=True, base_model="test",
                         base_config=config.to_dict())


def test_generated_adapter_loads_in_peft_with_our_logits(checkpoint, tmp_path):
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES)).eval()
    ids = torch.randint(0, 64, (2, 9))
    lora = checkpoint.generate(FakeEncoder(), ["Reverse every word."])[0]
    assert set(lora.a) == {f"model.layers.{layer}.self_attn.{m}" for layer in (0, 1)
                           for m in ("q_proj", "v_proj")} == set(checkpoint.modules)
    with torch.no_grad(), batched_lora(model, [lora, lora]):
        ours = model(ids).logits
    export_peft(lora, tmp_path / "adapter", base_model="test")
    peft_model = PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(theirs, plain, atol=1e-4)  # the adapter does something


def test_batch_of_descriptions_equals_one_by_one_and_checkpoint_round_trip(checkpoint, tmp_path):
    enc = FakeEncoder()
    descs = ["Sort the numbers.", "Count the vowels.", "Upper-case the text."]
    batch = checkpoint.generate(enc, descs)
    back = T2LCheckpoint.load(checkpoint.save(tmp_path / "ckpt"))
    for d, lora in zip(descs, batch):
        single = back.generate(enc, [d])[0]
        assert single.scale == lora.scale
        for name in lora.a:
            torch.testing.assert_close(single.a[name], lora.a[name])
            torch.testing.assert_close(single.b[name], lora.b[name])


def test_refusals(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="description"):
        checkpoint.generate(FakeEncoder(), [""])
    other = FakeEncoder()
    other.name = "another-encoder"
    with pytest.raises(ValueError, match="encoder"):
        checkpoint.generate(other, ["Sort."])
    with pytest.raises(ArtifactError, match="not a T2L checkpoint"):
        T2LCheckpoint.load(tmp_path)


def test_cli_generate_writes_a_peft_adapter_and_refuses_empty_descriptions(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from t2ray.t2l.encoder import DEFAULT_ENCODER

    t2ray = str(Path(sys.executable).parent / "t2ray")
    config = LlamaConfig(**SHAPES)
    n, modules = lora_targets(config.to_dict(), ["q_proj", "v_proj"])
    net = HyperLoRA(HyperConfig("S", n, modules, rank=4, encoder_dim=384, latent=16, head_in=20))
    T2LCheckpoint(net, DEFAULT_ENCODER, 8.0, True, "test", config.to_dict()).save(tmp_path / "c")
    ok = subprocess.run([t2ray, "t2l", "generate", str(tmp_path / "c"), "Sort the list.",
                         "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == pytest.approx(8.0 / 2 * 4)  # rsLoRA scale * r
    bad = subprocess.run([t2ray, "t2l", "generate", str(tmp_path / "c"), "  ", "--out",
                          str(tmp_path / "b")], capture_output=True, text=True)
    assert bad.returncode != 0 and "description" in bad.stderr


def test_module_names_come_from_the_architecture_gpt2_conv1d(tmp_path):
    """GPT-2 names its blocks transformer.h.N and stores W transposed (Conv1D); the names travel
    in the checkpoint's manifest."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    n, modules = lora_targets(config, ["c_attn", "c_fc"])
    assert n == 2 and modules == {"c_attn": (32, 96), "c_fc": (32, 128)}
    torch.manual_seed(0)
    net = HyperLoRA(HyperConfig("M", n, modules, rank=4, encoder_dim=12, latent=16, head_in=20))
    saved = T2LCheckpoint(net.eval(), "fake", 8.0, False, "gpt2", config.to_dict()).save(tmp_path)
    lora = T2LCheckpoint.load(saved).generate(FakeEncoder(), ["Sort the numbers."])[0]
    assert set(lora.a) == {f"transformer.h.{i}.{m}" for i in (0, 1)
                           for m in ("attn.c_attn", "mlp.c_fc")}
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad(), batched_lora(model, [lora, lora]):
        ours = model(ids).logits
    export_peft(lora, tmp_path / "adapter", base_model="gpt2")
    peft_model = PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours, atol=1e-5, rtol=1e-5)
