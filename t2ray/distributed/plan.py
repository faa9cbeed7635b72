"""Per-GPU memory plan for SVF training and its rollout engine, from a model config alone.

What a rank holds, in bytes:
- base weights: every parameter of the model in `dtype` (ZeRO-3 partitions them over the ranks);
- SVD factors: U (out x r), sigma (r) and V^T (r x in) of every target matrix, r = min(out, in),
  in `dtype`. They are buffers today, which ZeRO-3 does not partition (docs/architecture.md), so
  the plan shows them as things are (whole on every rank) and as partitioned parameters would be;
- z: one fp32 value per singular value, whole on every rank (the ZeRO-3 persistence threshold is
  raised to keep each z vector whole); its gradients (fp32) and Adam's two moments (fp32),
  partitioned from ZeRO-2 and ZeRO-1 on;
- the vLLM engine at tensor parallelism T: weights / T, each rank's slices of the factors
  (column-parallel matrices keep their rows of U and all of V^T, row-parallel ones all of U and
  their columns of V^T), and what is left of `gpu_memory_utilization` for the KV cache.
Activations, the recomposed W' workspace and framework overheads are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2ray.svf.targets import TargetMatrix, find_targets, meta_model

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
FP32 = 4
ADAM_MOMENTS = 2
ZERO_STAGES = (0, 1, 2, 3)
ROW_PARALLEL = ("o_proj", "down_proj")  # vLLM shards their inputs; every other target its outputs
GB = 1e9


@dataclass(frozen=True)
class PlanRequest:
    gpus: int
    gpu_mem_gb: float = 80.0
    targets: str = "mlp"
    tp: int = 1
    zero: tuple[int, ...] = ZERO_STAGES
    dtype: str = "bf16"
    max_len: int = 4096           # one sequence of this length must fit the engine's KV cache
    gpu_memory_utilization: float = 0.9  # vLLM's default share of the card it may take

    def __post_init__(self):
        if self.gpus < 1:
            raise ValueError(f"gpus must be at least 1, got {self.gpus}")
        if self.gpu_mem_gb <= 0:
            raise ValueError(f"gpu_mem must be positive, got {self.gpu_mem_gb}")
        if self.tp < 1 or self.tp > self.gpus:
            raise ValueError(f"tp must be between 1 and gpus ({self.gpus}), got {self.tp}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        unknown = set(self.zero) - set(ZERO_STAGES)
        if unknown or not self.zero:
            raise ValueError(f"zero stages must be among {ZERO_STAGES}, got {self.zero}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {self.max_len}")


def _field(cfg, name: str) -> int:
    value = getattr(cfg, name, None)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"the model config has no positive integer {name!r} (got {value!r})")
    return value


def factor_values(m: TargetMatrix, tp: int = 1) -> int:
    """U, sigma and V^T of one matrix; at tp > 1 one rank's slices of them."""
    r = m.rank
    if tp == 1:
        return r * (m.out_features + m.in_features + 1)
    if m.name.rsplit(".", 1)[-1] in ROW_PARALLEL:
        return r * (m.out_features + m.in_features // tp + 1)
    return r * (m.out_features // tp + m.in_features + 1)


def _attention(cfg, tp: int) -> dict:
    heads = _field(cfg, "num_attention_heads")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % tp:
        raise ValueError(f"tp={tp} does not divide num_attention_heads={heads}")
    if kv_heads % tp and tp % kv_heads:
        raise ValueError(f"tp={tp} neither divides nor is a multiple of "
                         f"num_key_value_heads={kv_heads}")
    head_dim = getattr(cfg, "head_dim", None) or _field(cfg, "hidden_size") // heads
    return {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "kv_heads_per_rank": max(1, kv_heads // tp)}  # vLLM replicates kv heads when tp > kv


def memory_plan(config, request: PlanRequest) -> dict:
    """The plan as one JSON-ready dict (bytes as integers, GB for reading)."""
    model = meta_model(config)
    cfg = model.config
    layers = _field(cfg, "num_hidden_layers")
    attention = _attention(cfg, request.tp)
    matrices = find_targets(model, request.targets)
    dtype_bytes = DTYPE_BYTES[request.dtype]
    n, mem = request.gpus, request.gpu_mem_gb * GB

    base_values = sum(p.numel() for p in model.parameters())
    target_values = sum(m.out_features * m.in_features for m in matrices)
    factor_total = sum(factor_values(m) for m in matrices)
    z_values = sum(m.rank for m in matrices)  # count_svf_params, on the model built above
    base_bytes, factor_bytes = base_values * dtype_bytes, factor_total * dtype_bytes
    z_bytes = z_values * FP32

    training = {f"zero{stage}": _training_rank(stage, n, base_bytes, factor_bytes, z_bytes, mem)
                for stage in request.zero}

    tp = request.tp
    engine_weights = base_bytes // tp
    engine_factors = sum(factor_values(m, tp) for m in matrices) * dtype_bytes
    kv_per_token = 2 * layers * attention["kv_heads_per_rank"] * attention["head_dim"] * dtype_bytes
    kv_budget = int(mem * request.gpu_memory_utilization) - engine_weights - engine_factors
    kv_tokens = max(kv_budget, 0) // kv_per_token
    engine = {"tp": tp, "base_weights": engine_weights, "svd_factor_slices": engine_factors,
              "svd_factor_share": engine_factors / factor_bytes, "kv_bytes_per_token": kv_per_token,
              "kv_cache": max(kv_budget, 0), "kv_cache_tokens": kv_tokens,
              "max_len": request.max_len, "fits": kv_tokens >= request.max_len}

    return {
        "model_type": cfg.model_type, "num_hidden_layers": layers, **attention,
        "gpus": n, "gpu_mem_gb": request.gpu_mem_gb, "dtype": request.dtype,
        "targets": request.targets, "target_matrices": len(matrices),
        "base_values": base_values, "base_weight_bytes": base_bytes,
        "target_weight_values": target_values,
        "svd_factor_values": factor_total, "svd_factor_bytes": factor_bytes,
        "factor_to_target_weights": factor_total / target_values,
        "z_values": z_values, "z_bytes": z_bytes,
        "training": training, "engine": engine,
        "min_gpus_zero3_factors_partitioned": _min_gpus(base_bytes, factor_bytes, z_bytes, mem),
        "notes": [
            "SVD factors are buffers today: ZeRO-3 does not partition them, so every rank holds "
            "all of them ('svd_factors'); 'svd_factors_partitioned' is what a rank would hold "
            "with the factors as frozen partitioned parameters.",
            "Activations, the recomposed W' workspace and framework overheads are not counted.",
        ],
    }


def _training_rank(stage: int, n: int, base: int, factors: int, z: int, mem: float) -> dict:
    """What one of n data-parallel ranks holds under a ZeRO stage."""
    weights = base // n if stage == 3 else base
    grads = z // n if stage >= 2 else z
    optim = ADAM_MOMENTS * z // (n if stage >= 1 else 1)
    partitioned = factors // n if stage == 3 else factors
    rest = weights + z + grads + optim
    return {"base_weights": weights, "svd_factors": factors,
            "svd_factors_partitioned": partitioned, "z": z, "gradients": grads,
            "optimizer": optim, "total": rest + factors,
            "total_factors_partitioned": rest + partitioned,
            "fits": rest + factors <= mem, "fits_factors_partitioned": rest + partitioned <= mem}


def _min_gpus(base: int, factors: int, z: int, mem: float, limit: int = 4096) -> int | None:
    """Fewest ranks for which ZeRO-3 with partitioned factors fits (None beyond `limit`)."""
    return next((n for n in range(1, limit + 1)
                 if _training_rank(3, n, base, factors, z, mem)["fits_factors_partitioned"]), None)
