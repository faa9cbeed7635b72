"""REINFORCE (+KL, group baseline), SFT, and the SVF / LoRA policies they train."""

from t2ray.distributed.loop import sft_loss
from t2ray.rl.policy import LoraPolicy, SVFPolicy
from t2ray.rl.reinforce import ReinforceConfig, advantages, reinforce_loss

__all__ = ["LoraPolicy", "SVFPolicy", "ReinforceConfig", "advantages", "reinforce_loss",
           "sft_loss"]
