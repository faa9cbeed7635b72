"""PEFT adapter directories: adapter_config.json + adapter_model.safetensors.

The scale is written so that every backend applies the same delta: we export `lora_alpha =
scale * r` with `use_rslora: false`, because alpha / r is the one convention PEFT and vLLM both
implement (a backend that ignores rsLoRA applies the wrong scale otherwise - ANCHORS.md). Our
manifest (`t2ray.artifacts`) lives beside PEFT's files in `t2ray_adapter.json`, which PEFT
ignores: base fingerprint, modules and shapes, and the training-time rank, alpha and rsLoRA flag.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from t2ray.artifacts import Format, not_found, read_manifest, write_manifest
from t2ray.lora.weights import LoraWeights

PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
LORA_ADAPTER = Format("t2ray.lora-adapter", 1, "a LoRA adapter",
                      make="make one with `t2ray lora train` or `t2ray t2l generate`",
                      refit="train it again on this base (`t2ray lora train`) or generate it "
                            "with a T2L checkpoint of this base",
                      filename="t2ray_adapter.json", untagged_v1=True)


def export_peft(lora: LoraWeights, out: str | Path, base_model: str = "",
                base_fingerprint: str | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in lora.a:
        tensors[f"{PREFIX}{name}.lora_A.weight"] = lora.a[name].detach().float().cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = lora.b[name].detach().float().cpu().contiguous()
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora.rank, "lora_alpha": lora.scale * lora.rank, "use_rslora": False,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in lora.a}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None,
    }
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=1))
    write_manifest(out, LORA_ADAPTER, base_fingerprint=base_fingerprint,
                   modules={n: (lora.b[n].shape[0], lora.a[n].shape[1]) for n in lora.a},
                   base_model=base_model, rank=lora.rank, alpha=lora.alpha,
                   use_rslora=lora.use_rslora, scale=lora.scale, meta=lora.meta)
    return out


def import_peft(path: str | Path, expect_fingerprint: str | None = None) -> LoraWeights:
    """Read any PEFT LoRA directory (ours or PEFT's own) into LoraWeights with its exact scale.
    Ours is refused if made for a base other than `expect_fingerprint`; PEFT's own record no
    base, so no check is possible there."""
    path = Path(path)
    config_path = path / PEFT_CONFIG
    if not config_path.exists():
        raise not_found(path, (LORA_ADAPTER,), PEFT_CONFIG)
    if (path / LORA_ADAPTER.filename).exists():
        read_manifest(path, LORA_ADAPTER, expect_fingerprint=expect_fingerprint)
    cfg = json.loads(config_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{path}: per-module rank/alpha patterns are not supported")
    tensors = load_file(path / "adapter_model.safetensors")
    a, b = {}, {}
    for key, t in tensors.items():
        name = key.removeprefix(PREFIX)
        for part, store in ((".lora_A.weight", a), (".lora_B.weight", b)):
            if name.endswith(part):
                store[name[: -len(part)].replace(".default", "")] = t
    return LoraWeights(a, b, rank=cfg["r"], alpha=cfg["lora_alpha"],
                       use_rslora=bool(cfg.get("use_rslora")),
                       target_modules=tuple(sorted({n.rsplit(".", 1)[-1] for n in a})))
