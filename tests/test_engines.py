"""The engine interface on the HF and lock-step engines: batched = one by one, `adapted` for
every adapter kind restores the base exactly, per-row adapters equal one-adapter runs, scores
against float64, stop strings and log-probs, and the adapter dispatch."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.engines import HFEngine, adapter_kind
from t2ray.engines.base import Engine
from t2ray.lora.weights import init_lora
from t2ray.models.prompt import Prompt, format_prompt
from t2ray.models.tokenizer import build_char_tokenizer
from t2ray.svf import ExpertVector, SVFParam, decompose

SHAPES = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
QUESTIONS = ("1+1?", "a much longer question", "x")


def engine(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES)).eval()
    cache = decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    return HFEngine(model, build_char_tokenizer(), batch_size=3, svd_cache=cache), cache


def _expert(cache, seed: int) -> ExpertVector:
    g = torch.Generator().manual_seed(seed)
    return ExpertVector.for_cache(cache, {n: 3 * torch.randn(r, generator=g)
                                          for n, r in cache.ranks().items()},
                                  SVFParam("reference"))


def _lora(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    lora = init_lora(model, 4, 8, generator=g)
    lora.b = {n: torch.randn(b.shape, generator=g) for n, b in lora.b.items()}
    return lora


def test_batched_greedy_equals_one_by_one(tmp_path):
    eng, _ = engine(tmp_path)
    batched = eng.generate(QUESTIONS, max_new_tokens=12)
    single = [eng.generate([q], max_new_tokens=12)[0] for q in QUESTIONS]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert all(c.text == eng.tokenizer.decode(c.token_ids) for c in batched)
    assert all(c.finish_reason in ("stop", "length") for c in batched)
    # a Prompt with a system turn is templated by the engine with the model's own template
    with_system = eng.generate([Prompt("x", system="be brief")], max_new_tokens=12)[0]
    ids = eng.tokenizer(format_prompt(eng.tokenizer, "x", "be brief"), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]
    want = eng.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0,
                              eos_token_id=2)[0, ids.shape[1]:].tolist()
    assert with_system.token_ids == [t for t in want if t not in (0, 2)][: len(with_system.token_ids)]


def test_adapted_restores_the_base_exactly_for_experts_and_loras(tmp_path):
    eng, cache = engine(tmp_path)
    prompts = ["2+2?"] * 2
    base = eng.generate(prompts, max_new_tokens=16)
    weights = {k: v.clone() for k, v in eng.model.state_dict().items()}
    with eng.adapted(_expert(cache, 1)):
        adapted = eng.generate(prompts, max_new_tokens=16)
    assert adapted[0].token_ids != base[0].token_ids
    assert all(torch.equal(weights[k], v) for k, v in eng.model.state_dict().items())
    assert eng.generate(prompts, max_new_tokens=16) == base
    with eng.adapted(init_lora(eng.model, 4, 8)):  # B = 0: no change
        assert eng.generate(prompts, max_new_tokens=16) == base
    with eng.adapted(_lora(eng.model, 2)):
        assert eng.generate(prompts, max_new_tokens=16)[0].token_ids != base[0].token_ids
    assert eng.generate(prompts, max_new_tokens=16) == base
    with pytest.raises(RuntimeError, match="boom"), eng.adapted(_expert(cache, 1)):
        raise RuntimeError("boom")  # an error inside the block still restores the base
    assert set(eng.model.state_dict()) == set(weights)
    assert all(torch.equal(weights[k], v) for k, v in eng.model.state_dict().items())


def test_kept_recomposed_experts_write_the_same_weights_without_recomposing(tmp_path,
                                                                          monkeypatch):
    import t2ray.engines.hf as hf

    eng, cache = engine(tmp_path)
    plain = HFEngine(eng.model, eng.tokenizer, svd_cache=cache)
    kept = HFEngine(eng.model, eng.tokenizer, svd_cache=cache, keep_recomposed=2)
    experts = [_expert(cache, s) for s in (1, 2, 3)]
    base = {k: v.clone() for k, v in eng.model.state_dict().items()}
    composed = []
    real = hf.compose_weights
    monkeypatch.setattr(hf, "compose_weights", lambda *a: composed.append(a[1]) or real(*a))
    for e in (*experts, experts[2], experts[1], experts[0]):  # 3, 2 kept; 1 was dropped
        with plain.adapted(e):
            want = {k: v.clone() for k, v in eng.model.state_dict().items()}
        with kept.adapted(e):
            assert all(torch.equal(want[k], v) for k, v in eng.model.state_dict().items())
        assert all(torch.equal(base[k], v) for k, v in eng.model.state_dict().items())
    assert composed == [experts[0], experts[1], experts[2], experts[0]]


def test_prefill_starts_the_answer_and_the_completion_is_what_follows(tmp_path):
    eng, _ = engine(tmp_path)
    forced = eng.generate([Prompt("1+1?", prefill="ab")], max_new_tokens=8)[0]
    ids = eng.tokenizer(format_prompt(eng.tokenizer, "1+1?") + "ab", return_tensors="pt",
                        add_special_tokens=False)["input_ids"]
    want = eng.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0,
                              eos_token_id=2)[0, ids.shape[1]:].tolist()
    assert forced.token_ids == [t for t in want if t not in (0, 2)][: len(forced.token_ids)]


def test_per_row_adapters_equal_one_adapter_runs(tmp_path):
    """The factorized SVF path and batched LoRA: each row runs with its own adapter, across
    the engine's internal batches (batch_size 3 over 4 rows)."""
    eng, cache = engine(tmp_path)
    prompts = ["1+1?", "abc", "x", "2*3"]
    experts = [_expert(cache, 1), None, _expert(cache, 2), _expert(cache, 1)]
    loras = [_lora(eng.model, 3), _lora(eng.model, 4), None, _lora(eng.model, 3)]
    for rows in (experts, loras):
        with eng.adapted(rows):
            got = eng.generate(prompts, max_new_tokens=10)
            scores = eng.score(prompts, ["4"] * 4)
        for p, adapter, c, s in zip(prompts, rows, got, scores):
            with eng.adapted(adapter):
                assert eng.generate([p], max_new_tokens=10)[0].token_ids == c.token_ids
                assert eng.score([p], ["4"])[0].item() == pytest.approx(s.item(), abs=1e-4)
    with eng.adapted(experts), pytest.raises(ValueError, match="4 per-row adapters for 2"):
        eng.generate(prompts[:2], max_new_tokens=4)
    assert set(dict(eng.model.named_modules())) == set(dict(engine(tmp_path / "b")[0]
                                                            .model.named_modules()))


def test_score_equals_float64_per_sequence(tmp_path):
    eng, _ = engine(tmp_path)
    model, tok = eng.model, eng.tokenizer
    prompts, answers = ["What is 2+3?", "def f(x): pass", "q"], ["5", "code", "other"]
    got = eng.score(prompts, answers)
    per_token = eng.score(prompts, answers, per_token=True)
    ref = model.double()
    try:
        for i, (p, a) in enumerate(zip(prompts, answers)):
            ctx = tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"]
            ans = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logp = torch.log_softmax(ref(input_ids=torch.tensor([ctx + ans])).logits[0], -1)
            want = sum(logp[len(ctx) + k - 1, t] for k, t in enumerate(ans)).item()
            assert got[i].item() == pytest.approx(want, abs=1e-4)
            assert per_token[i].item() == pytest.approx(want / len(ans), abs=1e-4)
    finally:
        model.float()
    with pytest.raises(ValueError, match="3 prompts but 2"):
        eng.score(prompts, answers[:2])


def test_stop_strings_and_logprobs(tmp_path):
    eng, _ = engine(tmp_path)
    full = eng.generate(["1+1?"], max_new_tokens=16, logprobs=True)[0]
    assert len(full.logprobs) == len(full.token_ids) and all(lp <= 0 for lp in full.logprobs)
    # the log-probs are the model's own (T = 1) for the tokens it produced
    assert full.logprobs == pytest.approx(_logprobs_of(eng, "1+1?", full.token_ids), abs=1e-4)
    assert eng.generate(["1+1?"], max_new_tokens=16)[0].logprobs is None
    stop = full.text[3:5]
    cut = eng.generate(["1+1?"], max_new_tokens=16, stop=[stop], logprobs=True)[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    assert eng.tokenizer.decode(cut.token_ids) == cut.text
    assert cut.logprobs == full.logprobs[: len(cut.token_ids)]


def _logprobs_of(eng, question: str, ids: list[int]) -> list[float]:
    """log p of each of `ids` after the templated question, one forward in float64."""
    tok = eng.tokenizer
    ctx = tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"]
    model = eng.model.double()
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + ids])).logits[0], -1)
    finally:
        model.float()
    return [logp[len(ctx) + k - 1, t].item() for k, t in enumerate(ids)]


def test_adapter_dispatch_and_refusals(tmp_path):
    eng, cache = engine(tmp_path)
    expert, lora = _expert(cache, 1), _lora(eng.model, 1)
    assert [adapter_kind(a) for a in (None, expert, lora, [expert, None], [None, lora],
                                      [None, None])] == [
        "none", "expert", "lora", "row-experts", "row-loras", "none"]
    with pytest.raises(ValueError, match="mixes SVF experts and LoRAs"):
        adapter_kind([expert, lora])
    with pytest.raises(TypeError, match="unknown adapter"):
        adapter_kind("math")
    with eng.adapted(expert), pytest.raises(RuntimeError, match="already adapted"):
        with eng.adapted(None):
            pass
    no_cache = HFEngine(eng.model, eng.tokenizer)
    with pytest.raises(ValueError, match="without an SVD cache"), no_cache.adapted(expert):
        pass
    info = eng.describe()
    assert info["engine"] == "hf" and info["base_fingerprint"] == cache.fingerprint
    assert set(info["adapter_kinds"]) == {"expert", "lora", "row-experts", "row-loras"}
    assert info["svf_targets"] == sorted(cache.matrices)
    assert isinstance(eng, Engine)


def test_lockstep_engine_matches_hf_generation(tmp_path):
    """The ZeRO-3 rollout path (the policy's own forward, right padding, no KV cache) decodes
    and scores exactly what the HF engine does with the expert recomposed into the weights."""
    from t2ray.engines.lockstep import LockstepEngine
    from t2ray.rl.policy import SVFPolicy

    eng, cache = engine(tmp_path)
    policy = SVFPolicy(eng.model, cache, SVFParam("reference"), seed=0)
    with torch.no_grad():
        for z in policy.z.values():
            z.mul_(1.5)  # a non-trivial expert
    with eng.adapted(policy.adapter()):
        expected = eng.generate(QUESTIONS, max_new_tokens=12, logprobs=True)
        scores = eng.score(QUESTIONS, ["ab", "c", "de"])
    lockstep = LockstepEngine(policy, eng.tokenizer, batch_size=2)
    got = lockstep.generate(QUESTIONS, max_new_tokens=12, logprobs=True)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in expected]
    for a, b in zip(got, expected):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert torch.allclose(lockstep.score(QUESTIONS, ["ab", "c", "de"]), scores, atol=1e-4)
    nearly_greedy = lockstep.generate(QUESTIONS, max_new_tokens=12, temperature=1e-4, seed=3)
    assert [c.token_ids for c in nearly_greedy] == [c.token_ids for c in expected]
    with pytest.raises(ValueError, match="does not take expert"), lockstep.adapted(
            policy.adapter()):
        pass
