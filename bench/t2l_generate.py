"""Time to generate a LoRA for every (layer, module) in one batched hypernetwork forward.

    python bench/t2l_generate.py [--repeats 20]

Shapes come from configs alone: the bundled tiny base and Mistral-7B (32 layers, q 4096x4096,
v 4096->1024, rank 8, a 1024-d encoder as gte-large). The hypernetwork is freshly initialised:
the time does not depend on what it learned. Encoding the description is timed separately (the
packaged MiniLM encoder, cached per description in real use).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from t2ray.t2l.encoder import DescriptionEncoder  # noqa: E402
from t2ray.t2l.generate import to_loras  # noqa: E402
from t2ray.t2l.hypernet import (  # noqa: E402
    HyperConfig,
    HyperLoRA,
    lora_targets,
    target_layers,
)

MISTRAL_7B = {"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "num_hidden_layers": 32}


def time_ms(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    from t2ray.models import load_model

    tiny_config = load_model("tiny")[0].config.to_dict()
    encoder = DescriptionEncoder()
    rows = []
    for label, config, enc_dim in (("tiny (bundled)", tiny_config, encoder.dim),
                                   ("Mistral-7B shapes", MISTRAL_7B, 1024)):
        n_layers, modules = lora_targets(config, ["q_proj", "v_proj"])
        layers = {t: [m.name for m in ms]
                  for t, ms in target_layers(config, ["q_proj", "v_proj"]).items()}
        for variant in ("L", "M", "S"):
            net = HyperLoRA(HyperConfig(variant, n_layers, modules, rank=8,
                                        encoder_dim=enc_dim)).eval()
            emb = torch.randn(1, enc_dim)

            @torch.inference_mode()
            def generate(net=net, emb=emb, layers=layers):
                return to_loras(net(emb), 8, 16.0, False, layers)

            median, best = time_ms(generate, args.repeats)
            n_params = sum(p.numel() for p in generate()[0].a.values()) + sum(
                p.numel() for p in generate()[0].b.values())
            rows.append(f"| {label} | {variant} | {n_layers * len(modules)} | {n_params:,} | "
                        f"{median:.1f} | {best:.1f} |")
            print(rows[-1])
    enc_median, _ = time_ms(lambda: encoder.model.encode(["Sort the numbers in ascending order."]),
                            args.repeats)
    body = ("One description, rank 8 on q_proj and v_proj, CPU fp32, median and best of "
            f"{args.repeats} runs (CPU times on a 2-core machine are indicative only). "
            "Target: < 50 ms for the tiny base.\n\n"
            "| base shapes | variant | LoRA matrices (layers x modules) | generated values | "
            "median (ms) | best (ms) |\n|---|---|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nEncoding the description (MiniLM, uncached): median {enc_median:.1f} ms.\n")
    write_section("t2l_generate", "python " + " ".join(sys.argv), body)
    print(body)


if __name__ == "__main__":
    main()
