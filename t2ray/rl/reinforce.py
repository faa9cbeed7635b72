"""REINFORCE on verifiable rewards with a KL penalty to the base policy.

    loss = - mean_i  r~_i * log pi(y_i | x_i)  +  lambda * KL(pi_z || pi_base)

log pi(y|x) is the sum of the completion's token log-probs (the reference) or their mean
(`logprob_reduction="mean"`); r~ is the reward itself (the reference, rewards +-1) or the reward
minus its group's mean when several samples are drawn per prompt (`baseline="group"`). Rollouts
may carry weights instead of being samples: every answer of a closed set, weighted by its
probability, gives the expected gradient over that set, and the group baseline becomes the
expected reward. The KL is
the exact per-token KL over the vocabulary at the rollout positions, in one of two named forms:
`kl_form="pi||ref, token-mean"` (KL(pi_z || pi_base) averaged over completion tokens, the
default) or `"ref||pi, sequence-sum"` (the reference implementation's: KL(pi_base || pi_z)
summed over each completion, averaged over completions; about a completion's length stronger
for the same coefficient, which is why the paper's 0-0.3 are weak in the first form). The base
policy's logits come from the same model with the expert switched off, so no second model copy
is held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KL_FORMS = ("pi||ref, token-mean", "ref||pi, sequence-sum")


@dataclass
class ReinforceConfig:
    kl_coef: float = 0.0  # the paper sweeps 0 - 0.3
    baseline: str = "none"  # "none" (reference) or "group"
    group_size: int = 1  # samples per prompt; rows of one prompt are adjacent
    logprob_reduction: str = "sum"  # "sum" (reference) or "mean" over completion tokens
    kl_form: str = "pi||ref, token-mean"  # or "ref||pi, sequence-sum" (the reference's)

    def __post_init__(self):
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, not {self.kl_form!r}")
        if self.baseline not in ("none", "group"):
            raise ValueError(f"baseline must be 'none' or 'group', not {self.baseline!r}")
        if self.logprob_reduction not in ("sum", "mean"):
            raise ValueError("logprob_reduction must be 'sum' or 'mean'")
        if self.baseline == "group" and self.group_size < 2:
            raise ValueError("a group baseline needs group_size >= 2 samples per prompt")


def completion_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for t >= 1: (B, T-1), from logits of the full sequence."""
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(
        -1, input_ids[:, 1:, None]).squeeze(-1)


def advantages(rewards: torch.Tensor, cfg: ReinforceConfig,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards minus their group's (weighted) mean; `weights` of one group sum to 1."""
    if cfg.baseline == "none":
        return rewards
    if rewards.numel() % cfg.group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {cfg.group_size}")
    groups = rewards.view(-1, cfg.group_size)
    if weights is None:
        baseline = groups.mean(dim=1, keepdim=True)
    else:
        baseline = (weights.view(-1, cfg.group_size) * groups).sum(dim=1, keepdim=True)
    return (groups - baseline).view(-1)


def reinforce_loss(policy_logits: torch.Tensor, input_ids: torch.Tensor,
                   completion_mask: torch.Tensor, rewards: torch.Tensor, cfg: ReinforceConfig,
                   base_logits: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Loss and statistics for a batch of rollouts.

    `input_ids` (B, T) are prompt + completion token ids exactly as generated (never
    re-tokenised text); `completion_mask` (B, T) is 1 on completion tokens (eos included).
    `weights` (B,), detached, summing to 1 over each prompt's rows, are the rollouts'
    probabilities when they enumerate a closed answer set; without them every row counts once.
    """
    mask = completion_mask[:, 1:].float()
    token_logp = completion_logprobs(policy_logits, input_ids) * mask
    n_tokens = mask.sum(dim=1).clamp_min(1.0)
    seq_logp = token_logp.sum(dim=1)
    if cfg.logprob_reduction == "mean":
        seq_logp = seq_logp / n_tokens
    rewards = rewards.to(seq_logp.device, seq_logp.dtype)  # verified on the CPU
    w = (torch.ones_like(rewards) if weights is None
         else weights.to(seq_logp.device, seq_logp.dtype).detach())
    adv = advantages(rewards, cfg, weights=None if weights is None else w)
    pg_loss = -(w * adv * seq_logp).sum() / w.sum()
    stats = {"pg_loss": pg_loss.item(), "reward_mean": ((w * rewards).sum() / w.sum()).item(),
             "accuracy": ((w * (rewards > 0)).sum() / w.sum()).item(),
             "completion_tokens": int(mask.sum().item())}
    loss = pg_loss
    if base_logits is not None:
        logp = torch.log_softmax(policy_logits[:, :-1].float(), -1)
        base_logp = torch.log_softmax(base_logits[:, :-1].float(), -1)
        if cfg.kl_form == KL_FORMS[0]:
            kl_tok = (logp.exp() * (logp - base_logp)).sum(-1)
            kl = (kl_tok * mask).sum() / mask.sum().clamp_min(1.0)
        else:  # per completion, weighted over completions like the policy gradient
            kl_tok = (base_logp.exp() * (base_logp - logp)).sum(-1)
            kl = (w * (kl_tok * mask).sum(dim=1)).sum() / w.sum()
        loss = loss + cfg.kl_coef * kl
        stats["kl"] = kl.item()
    stats["loss"] = loss.item()
    return loss, stats
