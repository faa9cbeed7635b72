"""The shared LoRA module: scale conventions, batched per-row application, PEFT round trip."""

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.lora import LoraWeights, batched_lora, export_peft, import_peft, lora_scale
from t2ray.lora.weights import init_lora

SHAPES = dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=64)


def model_and_ids(seed=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES)).eval()
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(seed))
    return model, ids


def random_lora(model, seed, rank=4, alpha=8.0, use_rslora=True):
    g = torch.Generator().manual_seed(seed)
    lw = init_lora(model, rank, alpha, use_rslora=use_rslora, generator=g)
    lw.b = {n: 0.1 * torch.randn(b.shape, generator=g) for n, b in lw.b.items()}
    return lw


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_scale_conventions():
    assert lora_scale(16, 32, use_rslora=False) == 2.0
    assert lora_scale(16, 32, use_rslora=True) == 8.0
    assert lora_scale(8, 16, use_rslora=True) == pytest.approx(16 / math.sqrt(8))


def test_batched_rows_equal_single_runs_and_merged_weights():
    model, ids = model_and_ids()
    loras = [random_lora(model, s) for s in (1, 2)]
    rows = [loras[0], None, loras[1]]
    with batched_lora(model, rows):
        batched = logits(model, ids)
    base = logits(model, ids)
    assert torch.allclose(batched[1], base[1], atol=1e-6)
    for i in (0, 2):
        lw = rows[i]
        merged = {n: p.clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for name in lw.a:
                model.get_submodule(name).weight += lw.delta(name)
        expected = logits(model, ids[i : i + 1])
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(merged[n])
        assert torch.allclose(batched[i : i + 1], expected, atol=1e-5)
    assert torch.equal(logits(model, ids), base)  # wrappers removed


def test_batched_lora_is_differentiable():
    model, ids = model_and_ids()
    lw = random_lora(model, 3)
    for t in (*lw.a.values(), *lw.b.values()):
        t.requires_grad_(True)
    with batched_lora(model, [lw] * 3):
        model(ids).logits.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in lw.b.values())


@pytest.mark.parametrize("use_rslora", [True, False])
def test_peft_loads_our_export_and_gives_our_logits(tmp_path, use_rslora):
    model, ids = model_and_ids()
    lw = random_lora(model, 4, rank=8, alpha=16.0, use_rslora=use_rslora)
    with batched_lora(model, [lw] * 3):
        ours = logits(model, ids)
    export_peft(lw, tmp_path, base_model="tiny-test")
    peft_model = PeftModel.from_pretrained(model, tmp_path).eval()
    theirs = logits(peft_model, ids)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with peft_model.disable_adapter():
        assert not torch.allclose(theirs, logits(peft_model, ids), atol=1e-3)  # LoRA is active
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] / cfg["r"] == pytest.approx(lw.scale) and cfg["use_rslora"] is False
    back = import_peft(tmp_path)
    assert back.scale == pytest.approx(lw.scale)
    assert all(torch.equal(back.a[n], lw.a[n]) and torch.equal(back.b[n], lw.b[n]) for n in lw.a)


def test_import_of_peft_native_rslora_adapter(tmp_path):
    model, ids = model_and_ids()
    cfg = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg).eval()
    expected = logits(peft_model, ids)
    peft_model.save_pretrained(tmp_path)
    base = peft_model.unload()
    lw = import_peft(tmp_path)
    assert lw.use_rslora and lw.scale == pytest.approx(8 / 2)
    with batched_lora(base, [lw] * 3):
        assert torch.allclose(logits(base, ids), expected, atol=1e-5)


def test_bad_lora_inputs():
    with pytest.raises(ValueError, match="rank"):
        LoraWeights({"m": torch.zeros(3, 5)}, {"m": torch.zeros(4, 2)}, rank=3, alpha=1.0)
    model, _ = model_and_ids()
    with pytest.raises(ValueError, match="no module matches"):
        init_lora(model, 4, 8, targets=("nope",))


def test_lora_dropout_drops_the_update_input_only_and_keeps_its_expectation():
    """PEFT's lora_dropout: the base output is untouched, the update's input is dropped with
    inverted scaling, so the mean over many draws is the update without dropout."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False))
    lora = LoraWeights({"0": torch.randn(2, 6)}, {"0": torch.randn(5, 2)}, rank=2, alpha=3.0)
    x = torch.randn(3, 4, 6)
    with batched_lora(model, [lora] * 3) as m:
        exact = m(x)
    want = x @ model[0].weight.T + lora.scale * (x @ lora.a["0"].T) @ lora.b["0"].T
    torch.testing.assert_close(exact, want)
    with batched_lora(model, [lora] * 3, dropout=0.5) as m:
        draws = torch.stack([m(x) for _ in range(4000)])
    assert not torch.allclose(draws[0], exact)
    torch.testing.assert_close(draws.mean(0), exact, atol=0.15, rtol=0.05)
    assert isinstance(model[0], torch.nn.Linear)  # restored after the block
