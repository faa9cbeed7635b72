"""Generation backends behind one interface (HF here; vLLM on GPUs)."""

from t2ray.engines.hf import Completion, HFEngine, format_prompt

__all__ = ["Completion", "HFEngine", "format_prompt"]
