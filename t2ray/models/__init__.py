"""Load any Hugging Face causal LM and its tokenizer (path or hub id), or the bundled `tiny` model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

TINY = "tiny"
TINY_DIR = Path(__file__).parent / "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_config(vocab_size: int, **overrides) -> LlamaConfig:
    """Architecture of the bundled base model: a small Llama with grouped-query attention.

    head_dim 64 because vLLM's CPU attention accepts 32, 64, 80, ... but not 16.
    """
    cfg = dict(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def resolve_model_path(name_or_path: str | Path) -> str:
    """`tiny` names the bundled model; anything else is a local path or a hub id."""
    if str(name_or_path) == TINY:
        if not (TINY_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the bundled model is missing from {TINY_DIR}; rebuild it with "
                "`t2ray base pretrain --out DIR --install`"
            )
        return str(TINY_DIR)
    name = str(name_or_path)
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"no model at {name}: the path does not exist (give a model "
                                "directory, `tiny`, or a hub id such as org/name)")
    return str(Path(name).expanduser()) if _looks_local(name) else name


def _looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`): absolute, home- or dot-relative, or
    anything that exists on disk."""
    return name.startswith(("/", "~", "./", "../")) or name in (".", "..") or Path(name).exists()


def load_tokenizer(name_or_path: str | Path):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left
    return tok


def load_model(
    name_or_path: str | Path = TINY, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) in eval mode. Works offline for local paths and the bundled model."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
    model.eval()
    return model, load_tokenizer(path)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names, shapes, dtypes and bytes), order independent."""
    return tensors_fingerprint(model.state_dict())


def tensors_fingerprint(tensors, extra: str = "") -> str:
    """Content hash of named tensors (names, shapes, dtypes and bytes), order independent."""
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def base_model_info(name_or_path: str | Path = TINY) -> dict:
    """Parameter count, bytes on disk, architecture summary and weights fingerprint."""
    model, tok = load_model(name_or_path)
    path = Path(resolve_model_path(name_or_path))
    cfg = model.config
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else None
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else None
    return {
        "model": str(name_or_path), "path": str(path), "architecture": cfg.architectures[0]
        if cfg.architectures else type(model).__name__, "model_type": cfg.model_type,
        "parameters": count_parameters(model), "bytes_on_disk": disk, "weights_bytes": weights,
        "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "attention_heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size, "dtype": str(next(model.parameters()).dtype),
        "fingerprint": weights_fingerprint(model),
    }
