"""LoRA weights, their (batched) functional application, and the PEFT on-disk format.

Shared by the LoRA baseline and Text-to-LoRA. The scale is part of the weights object and is
written explicitly on export, so PEFT, vLLM and our own path apply the same delta:
    delta W = scale * B @ A,   scale = alpha / sqrt(r) (rsLoRA) or alpha / r.
"""

from t2ray.lora.peft_io import export_peft, import_peft
from t2ray.lora.weights import LoraWeights, batched_lora, lora_scale

__all__ = ["LoraWeights", "batched_lora", "lora_scale", "export_peft", "import_peft"]
