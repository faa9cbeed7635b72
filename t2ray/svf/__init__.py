"""Singular Value Fine-tuning: SVD cache, expert vectors, application, mixing and transfer."""

from t2ray.svf.apply import (
    apply_expert,
    factorized,
    install_factorized,
    recomposed,
    restore_weights,
    uninstall_factorized,
)
from t2ray.svf.cache import SVDCache, decompose
from t2ray.svf.expert import ExpertLibrary, ExpertVector, SVFParam, compose_weight, mix
from t2ray.svf.targets import (
    config_targets,
    count_lora_params,
    count_svf_params,
    find_targets,
    resolve_targets,
)
from t2ray.svf.transfer import transfer

__all__ = ["SVDCache", "decompose", "ExpertVector", "ExpertLibrary", "SVFParam", "compose_weight",
           "mix", "apply_expert", "restore_weights", "recomposed", "factorized",
           "install_factorized", "uninstall_factorized", "find_targets", "config_targets",
           "resolve_targets", "count_svf_params", "count_lora_params", "transfer"]
