"""REINFORCE math against float64 references, and the policies' graphs."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from t2ray.rl import LoraPolicy, ReinforceConfig, SVFPolicy, advantages, reinforce_loss, sft_loss
from t2ray.svf import ExpertVector, SVFParam, decompose, recomposed

SHAPES = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def reference_loss(logits, base, ids, mask, rewards, kl_coef, reduction,
                   kl_form="pi||ref, token-mean"):
    """Loops in float64, written from the equations."""
    logits, base = logits.double(), base.double()
    b, t, _ = logits.shape
    pg, kl_sum, n_tok = 0.0, 0.0, 0.0
    for i in range(b):
        seq, n = 0.0, 0.0
        for j in range(1, t):
            if mask[i, j]:
                logp = torch.log_softmax(logits[i, j - 1], -1)
                q = torch.log_softmax(base[i, j - 1], -1)
                seq = seq + logp[ids[i, j]]
                kl_sum = kl_sum + ((logp.exp() * (logp - q)).sum() if kl_form.startswith("pi")
                                   else (q.exp() * (q - logp)).sum())
                n, n_tok = n + 1, n_tok + 1
        if reduction == "mean":
            seq = seq / n
        pg = pg - rewards[i] * seq
    kl = kl_sum / n_tok if kl_form.endswith("token-mean") else kl_sum / b
    return pg / b + kl_coef * kl


@pytest.mark.parametrize("kl_form", ["pi||ref, token-mean", "ref||pi, sequence-sum"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reinforce_loss_and_gradient_match_float64(reduction, kl_form):
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11, dtype=torch.float64, requires_grad=True)
    base = torch.randn(4, 7, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (4, 7))
    mask = torch.zeros(4, 7, dtype=torch.long)
    mask[:, 3:] = 1
    mask[1, 5:] = 0  # a shorter completion
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0])
    cfg = ReinforceConfig(kl_coef=0.2, logprob_reduction=reduction, kl_form=kl_form)
    loss, stats = reinforce_loss(logits, ids, mask, rewards, cfg, base_logits=base)
    ref = reference_loss(logits, base, ids, mask, rewards, 0.2, reduction, kl_form)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    (g,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g.double(), g_ref, atol=1e-5)
    assert stats["accuracy"] == 0.5 and stats["kl"] > 0


def test_group_baseline():
    cfg = ReinforceConfig(baseline="group", group_size=2)
    assert advantages(torch.tensor([1.0, 1.0, -1.0, 1.0]), cfg).tolist() == [0, 0, -1, 1]
    with pytest.raises(ValueError, match="groups of 2"):
        advantages(torch.ones(3), cfg)
    with pytest.raises(ValueError, match="group_size"):
        ReinforceConfig(baseline="group", group_size=1)


def test_weighted_group_baseline_is_the_expected_reward():
    cfg = ReinforceConfig(baseline="group", group_size=2)
    adv = advantages(torch.tensor([1.0, -1.0, -1.0, 1.0]), cfg, torch.tensor([0.75, 0.25, 0.5, 0.5]))
    assert adv.tolist() == [0.5, -1.5, -1.0, 1.0]


def test_enumerated_label_rollouts_give_the_exact_expected_gradient():
    """Every label of a closed set as one rollout, weighted by its probability, with the expected
    reward as baseline: the loss's gradient is minus the gradient of E_p[r], computed in float64
    by autograd through p itself (p = softmax over the labels of log pi(label | prompt))."""
    torch.manual_seed(0)
    n_prompts, vocab, labels = 3, 11, torch.tensor([2, 5, 7, 9])
    k = len(labels)
    prompt_logits = torch.randn(n_prompts, vocab, dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([[1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, -1.0],
                            [-1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    # rollout (prompt i, label j) is the sequence [prompt token, label j]; only the label is
    # completion, so log pi(rollout) = log_softmax(prompt_logits[i])[label j]
    ids = torch.stack([torch.tensor([0, int(labels[j])]) for _ in range(n_prompts)
                       for j in range(k)])
    mask = torch.tensor([[0, 1]] * (n_prompts * k))
    logits = torch.stack([prompt_logits.repeat_interleave(k, 0),
                          torch.zeros(n_prompts * k, vocab, dtype=torch.float64)], 1)
    label_logp = torch.log_softmax(prompt_logits, -1)[:, labels]
    probs = torch.softmax(label_logp, -1)
    expected_reward = (probs * rewards).sum(-1).mean()
    cfg = ReinforceConfig(baseline="group", group_size=k)
    loss, stats = reinforce_loss(logits, ids, mask, rewards.flatten(), cfg,
                                 weights=probs.detach().flatten())
    (g,) = torch.autograd.grad(loss, prompt_logits)
    (g_ref,) = torch.autograd.grad(-expected_reward, prompt_logits)
    assert torch.allclose(g.double(), g_ref, atol=1e-6)
    assert stats["reward_mean"] == pytest.approx(expected_reward.item(), abs=1e-6)
    # uniform weights are the unweighted loss
    flat = rewards.flatten()
    plain, _ = reinforce_loss(logits, ids, mask, flat, cfg)
    uniform, _ = reinforce_loss(logits, ids, mask, flat, cfg, weights=torch.full_like(flat, 1 / k))
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-6)


def test_sft_loss_counts_completion_tokens_only():
    logits = torch.zeros(1, 4, 5)
    ids = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert sft_loss(logits, ids, mask).item() == pytest.approx(torch.log(torch.tensor(5.0)).item())


def test_label_smoothed_sft_loss_matches_float64():
    """(1 - eps) * NLL + eps * mean over the vocabulary of -log p, on completion tokens only."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    eps, total, n = 0.1, 0.0, 0
    for i in range(2):
        for j in range(1, 5):
            if mask[i, j]:
                logp = torch.log_softmax(logits[i, j - 1], -1)
                total += -(1 - eps) * logp[ids[i, j]] - eps * logp.mean()
                n += 1
    assert sft_loss(logits, ids, mask, label_smoothing=eps).item() == pytest.approx(
        (total / n).item(), rel=1e-6)


def test_per_example_sft_loss_weighs_each_example_once():
    """Each row's mean over its own completion tokens, then the mean over rows (float64 loop):
    a row with one completion token counts as much as a row with three."""
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]])
    rows = []
    for i in range(2):
        nll = [-torch.log_softmax(logits[i, j - 1], -1)[ids[i, j]] for j in range(1, 5)
               if mask[i, j]]
        rows.append(sum(nll) / len(nll))
    want = (rows[0] + rows[1]) / 2
    assert sft_loss(logits, ids, mask, per_example=True).item() == pytest.approx(want.item(),
                                                                                 rel=1e-6)
    assert sft_loss(logits, ids, mask).item() != pytest.approx(want.item(), rel=1e-3)


@pytest.fixture(scope="module")
def model_and_cache(tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES)).eval()
    return model, decompose(model, "all", tmp_path_factory.mktemp("svd"), use_ray=False,
                            progress=False)


def test_svf_policy_is_recompose_in_autograd(model_and_cache):
    model, cache = model_and_cache
    policy = SVFPolicy(model, cache, SVFParam("reference"), seed=1)
    ids = torch.randint(0, 40, (2, 9))
    logits = policy(ids)
    with recomposed(model, cache, policy.expert()), torch.no_grad():
        expected = model(ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.z.values())
    assert not any(p.requires_grad for p in model.parameters())
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == [
        f"z.{k}" for k in policy.z.keys()]


def test_identity_policy_has_zero_kl(model_and_cache):
    model, cache = model_and_cache
    param = SVFParam("linear")
    ident = ExpertVector.for_cache(cache, {n: param.identity(r) for n, r in cache.ranks().items()},
                                   param)
    policy = SVFPolicy(model, cache, param, init=ident)
    ids = torch.randint(0, 40, (2, 9))
    mask = torch.ones_like(ids)
    _, stats = reinforce_loss(policy(ids), ids, mask, torch.ones(2), ReinforceConfig(kl_coef=0.1),
                              base_logits=policy.base_logits(ids))
    assert abs(stats["kl"]) < 1e-6


def test_lora_policy_starts_at_the_base_model(model_and_cache):
    model, _ = model_and_cache
    policy = LoraPolicy(model, rank=4, alpha=8)
    ids = torch.randint(0, 40, (2, 9))
    assert torch.allclose(policy(ids), policy.base_logits(ids), atol=1e-6)
    policy(ids).sum().backward()
    assert all(p.grad is not None for p in policy.b.values())
    # per layer: q (32 x 32) and v (16 x 32) at rank 4 -> 4 * (32 + 32) + 4 * (32 + 16)
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) == 2 * 4 * (64 + 48)


def test_residual_svf_forward_equals_substitution(tmp_path):
    """The ZeRO-3 form (W x + U diag(sigma' - sigma) V^T x added to each layer's output) gives
    the logits and z-gradients of substituting W' = U diag(sigma') V^T (float32: the cached
    factors reproduce W to about 1e-6)."""
    from conftest import TINY_RANDOM_SHAPES

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY_RANDOM_SHAPES))
    cache = decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    ids = torch.randint(3, 100, (2, 9))
    outputs = []
    for residual in (False, True):
        policy = SVFPolicy(model, cache, SVFParam("reference"), seed=0, residual=residual)
        logits = policy(ids)
        logits.square().mean().backward()
        outputs.append((logits.detach(), {k: z.grad.clone() for k, z in policy.z.items()}))
    (ref, ref_grad), (res, res_grad) = outputs
    assert not torch.allclose(ref, model(ids).logits)  # the expert does change the logits
    torch.testing.assert_close(res, ref, rtol=1e-4, atol=1e-5)
    for k in ref_grad:
        torch.testing.assert_close(res_grad[k], ref_grad[k], rtol=1e-3, atol=1e-6)
