"""The pretraining recipe, run for a few steps on a very small configuration."""

import json
import random

import pytest
import torch

from t2ray.distributed.loop import lr_factor
from t2ray.experiments.pretrain import PretrainConfig, build_corpus, make_batch, pretrain
from t2ray.models import load_model
from t2ray.models.prompt import format_prompt
from t2ray.models.tokenizer import build_char_tokenizer
from t2ray.tasks import get_task, list_tasks

SMALL_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}


def test_lr_schedule_warms_up_and_decays_to_the_floor():
    """The one schedule every trainer uses: pretraining's warmup + cosine to a floor, and the
    RL / T2L cosine to zero (no warmup, held at the end)."""
    def lr_at(s):
        return 1e-3 * lr_factor(s, 100, "cosine", warmup=10, min_ratio=0.1)

    assert lr_at(0) == pytest.approx(1e-4) and lr_at(9) == pytest.approx(1e-3)
    assert abs(lr_at(99) - 1e-4) < 1e-6
    assert all(lr_at(s) >= lr_at(s + 1) for s in range(10, 99))
    assert [lr_factor(s, 4) for s in (0, 2, 4, 9)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert lr_factor(7, 4, "constant") == 1.0
    # T2L's reference schedule: 20% warmup, then a straight line to zero
    assert [lr_factor(s, 10, "linear", warmup=2) for s in (0, 1, 2, 6, 10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 4, "exponential")


def test_batches_weight_answers_and_mix_in_distractors():
    cfg = PretrainConfig(batch_size=64)
    tok = build_char_tokenizer()
    corpus = build_corpus(cfg, tok)
    # v2: every instruction cell, held-out ones included, behind its tag
    assert len(corpus["instruct"]) == sum(t.split_sizes["train"] for t in list_tasks("instruct"))
    ids, w = make_batch(cfg, corpus, random.Random(0), tok.pad_token_id)
    assert ids.shape[0] == 64 and w.shape == (64, ids.shape[1] - 1)
    prompt_w = float(torch.tensor(cfg.prompt_loss_weight))  # as stored in float32
    assert set(w.unique().tolist()) <= {0.0, prompt_w, 1.0}
    # Every answer token is predicted with weight 1; the last answer token is <eos>.
    for row, weights in zip(ids, w):
        last = int((weights > 0).nonzero().max())
        assert row[last + 1] == tok.eos_token_id and weights[last] == 1.0
    # Math answers are the worked solution (share p_worked) or the bare answer.
    math_only = PretrainConfig(batch_size=200, mixture={"math": 1.0})
    ids, _ = make_batch(math_only, corpus, random.Random(1), tok.pad_token_id)
    answers = [tok.decode(row).split("\nA: ")[1].split("<eos>")[0] for row in ids]
    worked = sum(a.count("=") == 2 for a in answers)
    assert sum(a.startswith("The answer is ") for a in answers) + worked == 200
    expected = 200 * math_only.p_worked["math"]
    assert abs(worked - expected) < 30  # binomial sd about 7 at the recipe's shares
    # Code solutions are correct (share p_correct) or confuse the operator.
    task = get_task("code")
    expected = {format_prompt(tok, e.prompt): (e.solution, task.distractor(e, None))
                for e in task.examples("train")}
    code_only = PretrainConfig(batch_size=200, mixture={"code": 1.0})
    ids, _ = make_batch(code_only, corpus, random.Random(2), tok.pad_token_id)
    kinds = []
    for row in ids:
        text = tok.decode(row).split("<eos>")[0]
        prompt = next(p for p in expected if text.startswith(p))
        kinds.append(expected[prompt].index(text[len(prompt):]))
    assert abs(kinds.count(0) - 200 * code_only.p_correct["code"]) < 30


@pytest.mark.slow  # the default suite's time; CI runs it
def test_pretrain_runs_end_to_end_and_is_deterministic(tmp_path):
    outs = []
    for run in ("a", "b"):
        cfg = PretrainConfig(out=str(tmp_path / run), steps=3, batch_size=4, warmup_steps=1,
                             eval_every=1000, eval_n=2, model=SMALL_MODEL)
        model_dir = pretrain(cfg)
        outs.append(load_model(model_dir)[0])
    a, b = (dict(m.named_parameters()) for m in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 and "val_accuracy" in metrics[-1]
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "a" / "pretrain_config.yaml").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_pretrain_refuses_a_device_it_cannot_use(tmp_path):
    for device, message in (("tpu", "cpu or cuda"), ("cuda", "sees no GPU")):
        with pytest.raises(ValueError, match=message):
            pretrain(PretrainConfig(out=str(tmp_path / device), device=device))
        assert not (tmp_path / device).exists()  # refused before any output is written
