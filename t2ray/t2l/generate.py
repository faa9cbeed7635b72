"""From hypernetwork outputs to LoRA adapters, and the T2L checkpoint format.

A checkpoint directory holds `hypernet.safetensors` and `manifest.json` (the HyperConfig, the
encoder name, the LoRA alpha / rsLoRA convention, the base model's config and name). Generated
adapters export to PEFT with the scale written explicitly (`t2ray.lora.peft_io`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import t2ray
from t2ray.lora.weights import LoraWeights
from t2ray.t2l.hypernet import HyperConfig, HyperLoRA

FORMAT = "t2ray.t2l"
FORMAT_VERSION = 1
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_path(layer: int, module: str) -> str:
    """Full module name in Llama / Mistral / Qwen2 models."""
    block = "self_attn" if module in ATTENTION else "mlp"
    return f"model.layers.{layer}.{block}.{module}"


def to_loras(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, alpha: float,
             use_rslora: bool, meta: list[dict] | None = None) -> list[LoraWeights]:
    """One LoraWeights per batch row of a hypernetwork forward."""
    first = next(iter(outputs.values()))[0]
    batch, n_layers = first.shape[:2]
    loras = []
    for i in range(batch):
        a = {module_path(layer, m): outputs[m][0][i, layer]
             for m in outputs for layer in range(n_layers)}
        b = {module_path(layer, m): outputs[m][1][i, layer]
             for m in outputs for layer in range(n_layers)}
        loras.append(LoraWeights(a, b, rank, alpha, use_rslora, tuple(outputs),
                                 meta=(meta[i] if meta else {})))
    return loras


def to_experts(outputs: dict[str, torch.Tensor], cache, param=None) -> list:
    """One ExpertVector per batch row of a text-to-SVF (variant Z) forward, on `cache`'s
    matrices; z keeps its graph, so training flows through it."""
    from t2ray.svf.expert import ExpertVector, SVFParam

    param = param or SVFParam("reference")
    first = next(iter(outputs.values()))
    batch, n_layers = first.shape[:2]
    return [ExpertVector.for_cache(cache, {module_path(layer, m): outputs[m][i, layer]
                                           for m in outputs for layer in range(n_layers)}, param)
            for i in range(batch)]


@dataclass
class T2LCheckpoint:
    net: HyperLoRA
    encoder: str
    lora_alpha: float
    use_rslora: bool
    base_model: str
    base_config: dict

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()},
                  path / "hypernet.safetensors")
        (path / "manifest.json").write_text(json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "t2ray_version": t2ray.__version__, "hyper": self.net.cfg.as_dict(),
            "encoder": self.encoder, "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora, "base_model": self.base_model,
            "base_config": self.base_config, **(extra or {})}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "T2LCheckpoint":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} is not a T2L checkpoint (no manifest.json)")
        m = json.loads(manifest_path.read_text())
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {m.get('format')} v{m.get('format_version')}, "
                             f"expected {FORMAT} v{FORMAT_VERSION}")
        net = HyperLoRA(HyperConfig(**m["hyper"]))
        net.load_state_dict(load_file(path / "hypernet.safetensors"))
        return cls(net.eval(), m["encoder"], m["lora_alpha"], m["use_rslora"], m["base_model"],
                   m["base_config"])

    @torch.inference_mode()
    def generate(self, encoder, descriptions: list[str], svd_cache=None) -> list:
        """LoRAs (or, for a text-to-SVF checkpoint, expert vectors on `svd_cache`) for a batch
        of descriptions in one encoder pass and one hypernetwork forward."""
        if encoder.name != self.encoder:
            raise ValueError(f"checkpoint was trained with encoder {self.encoder!r}, "
                             f"got {encoder.name!r}")
        outputs = self.net(encoder.encode(descriptions))
        if self.net.cfg.variant == "Z":
            if svd_cache is None:
                raise ValueError("a text-to-SVF checkpoint needs the base model's SVD cache")
            experts = to_experts(outputs, svd_cache)
            for e, d in zip(experts, descriptions):
                e.metrics = {"description": d}
            return experts
        return to_loras(outputs, self.net.cfg.rank, self.lora_alpha, self.use_rslora,
                        [{"description": d} for d in descriptions])
