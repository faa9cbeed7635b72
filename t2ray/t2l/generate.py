"""From hypernetwork outputs to LoRA adapters, and the T2L checkpoint format.

A checkpoint directory holds `hypernet.safetensors` and `manifest.json` (`t2ray.artifacts`: base
fingerprint, the full name and shape of every module the LoRAs are for; here also the
HyperConfig, the encoder name, the LoRA alpha / rsLoRA convention, the base model's config and
name). Generated adapters export to PEFT with the scale written explicitly (`t2ray.lora.peft_io`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2ray.artifacts import Format, read_manifest, write_manifest
from t2ray.lora.weights import LoraWeights
from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, by_type, target_layers

# v2: module names come from the manifest (v1 checkpoints: discovered from their base_config)
T2L_CHECKPOINT = Format("t2ray.t2l", 2, "a T2L checkpoint",
                        make="train one with `t2ray t2l train`",
                        refit="train a T2L checkpoint on this base (`t2ray t2l train`)")
def to_loras(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, alpha: float,
             use_rslora: bool, layers: dict[str, list[str]],
             meta: list[dict] | None = None) -> list[LoraWeights]:
    """One LoraWeights per batch row of a hypernetwork forward; `layers` names each module
    type's module in every layer (`T2LCheckpoint.layers`, found in the model's architecture)."""
    first = next(iter(outputs.values()))[0]
    batch, n_layers = first.shape[:2]
    loras = []
    for i in range(batch):
        a = {layers[m][layer]: outputs[m][0][i, layer]
             for m in outputs for layer in range(n_layers)}
        b = {layers[m][layer]: outputs[m][1][i, layer]
             for m in outputs for layer in range(n_layers)}
        loras.append(LoraWeights(a, b, rank, alpha, use_rslora, tuple(outputs),
                                 meta=(meta[i] if meta else {})))
    return loras


def to_experts(outputs: dict[str, torch.Tensor], cache, param=None) -> list:
    """One ExpertVector per batch row of a text-to-SVF (variant Z) forward, on `cache`'s
    matrices; z keeps its graph, so training flows through it."""
    from t2ray.svf.expert import ExpertVector, SVFParam

    param = param or SVFParam("reference")
    layers = by_type(cache.matrices)  # the names SVF found in the model itself
    first = next(iter(outputs.values()))
    batch, n_layers = first.shape[:2]
    return [ExpertVector.for_cache(cache, {layers[m][layer]: outputs[m][i, layer]
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
    base_fingerprint: str | None = None
    # full module name -> (out, in), each type in layer order; None: discovered from base_config
    modules: dict[str, tuple[int, int]] | None = None

    def __post_init__(self):
        if self.modules is None:
            self.modules = {m.name: (m.out_features, m.in_features) for matrices in
                            target_layers(self.base_config, self.net.module_names).values()
                            for m in matrices}
        counts = {t: len(names) for t, names in self.layers.items()}
        if counts != {t: self.net.cfg.n_layers for t in self.net.module_names}:
            raise ValueError(f"modules {counts} do not fit a hypernetwork of "
                             f"{self.net.cfg.n_layers} layers x {self.net.module_names}")

    @property
    def layers(self) -> dict[str, list[str]]:
        """Each module type's full name in every layer, as `to_loras` takes them."""
        return by_type(self.modules)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()},
                  path / "hypernet.safetensors")
        write_manifest(path, T2L_CHECKPOINT, base_fingerprint=self.base_fingerprint,
                       modules=self.modules, hyper=self.net.cfg.as_dict(), encoder=self.encoder,
                       lora_alpha=self.lora_alpha, use_rslora=self.use_rslora,
                       base_model=self.base_model, base_config=self.base_config, **(extra or {}))
        return path

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> "T2LCheckpoint":
        path = Path(path)
        m = read_manifest(path, T2L_CHECKPOINT, expect_fingerprint=expect_fingerprint)
        net = HyperLoRA(HyperConfig(**m["hyper"]))
        net.load_state_dict(load_file(path / "hypernet.safetensors"))
        modules = ({k: tuple(v) for k, v in m["modules"].items()} if m["format_version"] >= 2
                   else None)
        return cls(net.eval(), m["encoder"], m["lora_alpha"], m["use_rslora"], m["base_model"],
                   m["base_config"], m.get("base_fingerprint"), modules)

    @torch.inference_mode()
    def generate(self, encoder, descriptions: list[str], svd_cache=None) -> list:
        """LoRAs (or, for a text-to-SVF checkpoint, expert vectors on `svd_cache`) for a batch
        of descriptions in one encoder pass and one hypernetwork forward."""
        if encoder.name != self.encoder:
            raise ValueError(f"checkpoint was trained with encoder {self.encoder!r}, "
                             f"got {encoder.name!r}")
        device = next(self.net.parameters()).device  # encoders give CPU embeddings
        outputs = self.net(encoder.encode(descriptions).to(device))
        if self.net.cfg.variant == "Z":
            if svd_cache is None:
                raise ValueError("a text-to-SVF checkpoint needs the base model's SVD cache")
            experts = to_experts(outputs, svd_cache)
            for e, d in zip(experts, descriptions):
                e.metrics = {"description": d}
            return experts
        return to_loras(outputs, self.net.cfg.rank, self.lora_alpha, self.use_rslora,
                        self.layers, [{"description": d} for d in descriptions])
