"""t2ray: self-adaptive language models (Transformer-squared SVF experts, Text-to-LoRA) on Ray."""

__version__ = "0.1.0"
