"""The HF engine: batched generation equals one-by-one; expert and LoRA switching."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.engines import HFEngine, format_prompt
from t2ray.lora.weights import init_lora
from t2ray.models.tokenizer import build_char_tokenizer
from t2ray.svf import ExpertVector, SVFParam, decompose

SHAPES = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)


def engine(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES)).eval()
    cache = decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    return HFEngine(model, build_char_tokenizer(), batch_size=3, svd_cache=cache), cache


def test_batched_greedy_equals_one_by_one(tmp_path):
    eng, _ = engine(tmp_path)
    prompts = [format_prompt(eng.tokenizer, q) for q in ("1+1?", "a much longer question", "x")]
    batched = eng.generate(prompts, max_new_tokens=12)
    single = [eng.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert all(c.text == eng.tokenizer.decode(c.token_ids) for c in batched)


def test_expert_and_lora_switching(tmp_path):
    eng, cache = engine(tmp_path)
    prompts = [format_prompt(eng.tokenizer, "2+2?")] * 2
    base = eng.generate(prompts, max_new_tokens=16)
    weights = {k: v.clone() for k, v in eng.model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    expert = ExpertVector.for_cache(cache, {n: 3 * torch.randn(r, generator=g)
                                            for n, r in cache.ranks().items()},
                                    SVFParam("reference"))
    eng.set_expert(expert)
    adapted = eng.generate(prompts, max_new_tokens=16)
    assert adapted[0].token_ids != base[0].token_ids
    eng.set_expert(None)
    assert all(torch.equal(weights[k], v) for k, v in eng.model.state_dict().items())
    assert eng.generate(prompts, max_new_tokens=16) == base
    lora = init_lora(eng.model, 4, 8)  # B = 0: no change
    eng.set_lora(lora)
    assert eng.generate(prompts, max_new_tokens=16) == base
    lora.b = {n: torch.randn(b.shape, generator=g) for n, b in lora.b.items()}
    assert eng.generate(prompts, max_new_tokens=16)[0].token_ids != base[0].token_ids
    eng.set_lora(None)
    assert eng.generate(prompts, max_new_tokens=16) == base


def test_lockstep_engine_matches_hf_generation(tmp_path):
    """The ZeRO-3 rollout path (the policy's own forward, right padding, no KV cache) decodes
    exactly what the HF engine decodes with the expert recomposed into the weights."""
    from t2ray.engines.lockstep import LockstepEngine
    from t2ray.rl.policy import SVFPolicy

    eng, cache = engine(tmp_path)
    prompts = [format_prompt(eng.tokenizer, q) for q in ("1+1?", "a much longer question", "x")]
    policy = SVFPolicy(eng.model, cache, SVFParam("reference"), seed=0)
    with torch.no_grad():
        for z in policy.z.values():
            z.mul_(1.5)  # a non-trivial expert
    eng.set_expert(policy.expert())
    expected = eng.generate(prompts, max_new_tokens=12)
    eng.reset()
    lockstep = LockstepEngine(policy, eng.tokenizer, batch_size=2)
    got = lockstep.generate(prompts, max_new_tokens=12)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]
    nearly_greedy = lockstep.generate(prompts, max_new_tokens=12, temperature=1e-4, seed=3)
    assert [c.token_ids for c in nearly_greedy] == [c.token_ids for c in expected]
