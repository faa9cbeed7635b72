"""Whole operations behind `t2ray svf ...` and the jobs: each takes names and paths."""

from __future__ import annotations

import json
from pathlib import Path

from t2ray.artifacts import read_manifest
from t2ray.models import load_model, weights_fingerprint
from t2ray.svf.cache import SVD_CACHE, SVDCache, decompose
from t2ray.svf.expert import SVF_EXPERT, ExpertVector
from t2ray.svf.targets import count_lora_params, count_svf_params, model_config, resolve_targets
from t2ray.svf.transfer import transfer

DEFAULT_CACHE_ROOT = Path("runs") / "svd"


def params_from_config(config_path: str | Path, targets: str) -> dict:
    """Parameter counts from a Hugging Face config.json alone (no weights)."""
    raw = json.loads(Path(config_path).read_text())
    cfg = model_config(raw.get("text_config", raw))  # multimodal configs nest the LM's
    return {"svf": count_svf_params(cfg, targets), "targets": list(resolve_targets(targets)),
            "lora_r16_qv": count_lora_params(cfg, 16, ("q_proj", "v_proj")),
            "lora_r8_qv": count_lora_params(cfg, 8, ("q_proj", "v_proj")),
            "layers": cfg.num_hidden_layers}


def decompose_model(model_name: str, targets: str, out: str | Path | None = None,
                    use_ray: bool | None = None) -> SVDCache:
    """SVD cache of a model (default location: runs/svd/<fingerprint>-<targets>)."""
    model, _ = load_model(model_name)
    if out is None:
        out = DEFAULT_CACHE_ROOT / f"{weights_fingerprint(model)}-{targets.replace(',', '+')}"
    return decompose(model, targets, out, use_ray=use_ray)


def describe(path: str | Path) -> dict:
    """What an SVD cache or an expert directory holds."""
    m = read_manifest(path, (SVD_CACHE, SVF_EXPERT))
    if m["format"] == SVD_CACHE.name:
        return {"kind": "svd-cache", "base_fingerprint": m["base_fingerprint"],
                "targets": m["targets"], "matrices": len(m["matrices"]),
                "svf_params": sum(x["rank"] for x in m["matrices"]),
                "max_recon_error": m["max_recon_error"], "t2ray_version": m["t2ray_version"]}
    return {"kind": "svf-expert", "task": m["task"], "base_fingerprint": m["base_fingerprint"],
            "targets": m["targets"], "parameterisation": m["parameterisation"],
            "params": m["num_params"], "metrics": m["metrics"],
            "t2ray_version": m["t2ray_version"]}


def transfer_to_model(expert_path: str | Path, model_name: str, out: str | Path,
                      shuffle: bool = False, cache_dir: str | Path | None = None) -> ExpertVector:
    """Move an expert to another model of the same matrix shapes and save it at `out`."""
    expert = ExpertVector.load(expert_path)
    cache = decompose_model(model_name, ",".join(expert.targets), cache_dir)
    moved = transfer(expert, cache, shuffle=shuffle)
    moved.save(out)
    return moved
