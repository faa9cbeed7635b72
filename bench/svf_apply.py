"""SVF application speed: base vs recomposed vs factorized, and expert switch vs model reload.

    python bench/svf_apply.py [--repeats 5]

Measured in one run on the bundled tiny model and on a larger random Llama (8 layers x 1024).
Targets: recomposed >= 0.95x base tokens/s; factorized with per-request mixtures >= 0.5x base;
switching experts (recompose) >= 20x faster than reloading the model from disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import median_time, write_section  # noqa: E402

from t2ray.models import load_model  # noqa: E402
from t2ray.svf import ExpertVector, SVFParam, decompose, factorized, mix, recomposed  # noqa: E402

BATCH, SEQ = 8, 128


def random_experts(cache, k: int) -> list[ExpertVector]:
    g = torch.Generator().manual_seed(0)
    param = SVFParam("reference")
    return [ExpertVector.for_cache(cache, {n: torch.randn(r, generator=g)
                                           for n, r in cache.ranks().items()}, param, f"e{i}")
            for i in range(k)]


def bench_model(label: str, model, model_dir: Path, repeats: int, workdir: Path) -> dict:
    cache = decompose(model, "all", workdir / f"svd-{label}", use_ray=False, progress=False)
    experts = random_experts(cache, 3)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ),
                        generator=torch.Generator().manual_seed(0))
    tokens = BATCH * SEQ

    @torch.inference_mode()
    def forward():
        model(ids)

    base = median_time(forward, repeats)
    with recomposed(model, cache, experts[0]):
        recomposed_t = median_time(forward, repeats)
    mixes = [mix(experts, torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(i)),
                                        0)) for i in range(BATCH)]
    with factorized(model, cache, [experts[0]] * BATCH):
        fact_one = median_time(forward, repeats)
    with factorized(model, cache, mixes):
        fact_mix = median_time(forward, repeats)

    def switch():
        with recomposed(model, cache, experts[1]):
            pass

    switch_t = median_time(switch, repeats)
    reload_t = median_time(lambda: AutoModelForCausalLM.from_pretrained(model_dir), repeats)
    params = sum(p.numel() for p in model.parameters())
    return {"model": label, "params": params, "base": tokens / base,
            "recomposed": tokens / recomposed_t, "fact_one": tokens / fact_one,
            "fact_mix": tokens / fact_mix, "switch_s": switch_t, "reload_s": reload_t}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny, _ = load_model("tiny")
        from t2ray.models import TINY_DIR

        rows.append(bench_model("tiny (bundled)", tiny, TINY_DIR, args.repeats, work))
        big_cfg = LlamaConfig(vocab_size=1000, hidden_size=1024, intermediate_size=2816,
                              num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                              head_dim=64)
        big = AutoModelForCausalLM.from_config(big_cfg).eval()
        big.save_pretrained(work / "big")
        rows.append(bench_model("random 8x1024", big, work / "big", args.repeats, work))

    lines = [f"Forward pass over a batch of {BATCH} x {SEQ} tokens, SVF on mlp + attn (q, v), "
             f"median of {args.repeats}; fp32.", "",
             "| model | params | base tok/s | recomposed (x base) | factorized, one expert "
             "(x base) | factorized, 8 different mixtures (x base) | expert switch | reload from "
             "disk | reload / switch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['base']:.0f} | "
            f"{r['recomposed'] / r['base']:.2f} | {r['fact_one'] / r['base']:.2f} | "
            f"{r['fact_mix'] / r['base']:.2f} | {1e3 * r['switch_s']:.1f} ms | "
            f"{1e3 * r['reload_s']:.1f} ms | {r['reload_s'] / r['switch_s']:.1f}x |")
    lines += ["", "Targets: recomposed >= 0.95x base; factorized with per-request mixtures >= "
              "0.5x base; switch >= 20x faster than a reload."]
    body = "\n".join(lines)
    print(body)
    write_section("svf_apply", f"python bench/svf_apply.py --repeats {args.repeats}", body)


if __name__ == "__main__":
    main()
