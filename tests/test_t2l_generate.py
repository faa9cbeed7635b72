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


def test_the_kits_t2l_writes_adapters_that_peft_scores_as_the_table_does(tmp_path):
    """The shipped checkpoint is the v2 table's t2l-sft-M seed 0: `t2ray t2l generate` on a
    held-out cell's description writes a PEFT adapter, and the base model with PEFT answers
    that description's items of the cell as the table's kept verdicts say."""
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from t2ray.eval.harness import max_new_tokens_for, verdicts_of
    from t2ray.eval.results import read_verdicts
    from t2ray.experiments.demo import RESULTS_JSON, UNSEEN_INSTRUCT_DEMO
    from t2ray.models import TINY_DIR
    from t2ray.models.prompt import Prompt, templated
    from t2ray.serve.library import KIT_DIR
    from t2ray.t2l.encoder import load_encoder
    from t2ray.tasks import get_task

    scores = RESULTS_JSON.parent / "scores" / "t2l-v2.jsonl.gz"
    kept = {(d["task"], d["method"], d["seed"]): d["verdicts"] for d in read_verdicts(scores)}
    table = [v == "1" for v in kept[UNSEEN_INSTRUCT_DEMO, "t2l-sft-M", 0]]
    task = get_task(UNSEEN_INSTRUCT_DEMO)
    examples = task.examples("test")
    k = len(task.descriptions)
    t2ray = str(Path(sys.executable).parent / "t2ray")
    tok = AutoTokenizer.from_pretrained(TINY_DIR)
    base = AutoModelForCausalLM.from_pretrained(TINY_DIR).eval()
    ckpt = T2LCheckpoint.load(KIT_DIR / "t2l")
    encoder = load_encoder(ckpt.encoder)
    agree, n = 0, 0
    for j in range(6):  # six of the cell's descriptions, each with its share of the items
        out = tmp_path / f"adapter{j}"
        if j == 0:  # the user's command
            done = subprocess.run([t2ray, "t2l", "generate", str(KIT_DIR / "t2l"),
                                   task.descriptions[j], "--out", str(out)],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        else:  # what the command runs, in this process
            export_peft(ckpt.generate(encoder, [task.descriptions[j]])[0], out,
                        base_model=ckpt.base_model, base_fingerprint=ckpt.base_fingerprint)
        model = PeftModel.from_pretrained(base, out).eval()
        rows = list(range(j, len(examples), k))
        texts = [templated(tok, Prompt(examples[i].prompt)) for i in rows]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id,
                                 max_new_tokens=max_new_tokens_for(task, _Counter(tok)))
        answers = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        got = verdicts_of(task, [examples[i] for i in rows], answers)
        agree += sum(g == table[i] for g, i in zip(got, rows))
        n += len(rows)
        base = model.unload()
    assert agree == n, f"PEFT's verdicts differ from the table's on {n - agree} of {n} items"


class _Counter:
    """The token counter `max_new_tokens_for` needs, over a plain tokenizer."""

    def __init__(self, tok):
        self.tok = tok

    def count_tokens(self, texts):
        return [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
