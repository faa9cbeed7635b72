"""Generation backends behind one interface (`base.Engine`): HF and lock-step here; vLLM on GPUs."""

from t2ray.engines.base import Completion, Engine, adapter_kind, label_scores
from t2ray.engines.hf import HFEngine

__all__ = ["Completion", "Engine", "HFEngine", "adapter_kind", "label_scores"]
