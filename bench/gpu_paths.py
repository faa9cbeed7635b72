"""The GPU paths, checked and then timed on one card.

    python bench/gpu_paths.py [--layers 4] [--repeats 10] [--json FILE]
    python bench/gpu_paths.py --smoke   # tiny shapes on any device: checks the script itself

- SVF at Llama-3.1-8B layer shapes in bf16 (`--layers` of its 32 decoder layers, its 128k
  vocabulary): the SVD cache built on the GPU, W' composed there, recompose and factorized
  forwards, an expert switch.
- T2L: one hypernetwork forward (variants L, M, S) at Mistral-7B shapes, 1 and 16 descriptions.
- DeepSpeed: an SVF policy step (z trainable, the base frozen) under ZeRO-2 and ZeRO-3, in one
  process through `t2ray.distributed.deepspeed.initialize`.

Each path is checked before it is timed (W' against float64, factorized logits against
recomposed, GPU hypernetwork outputs against the CPU's, z moving under DeepSpeed); a path that
fails is reported with its error and the run goes on. Writes the `gpu_paths` section of
docs/benchmarks.md (only on a GPU, or always with --smoke --write).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import median_time, write_section  # noqa: E402
from svf_apply import random_experts  # noqa: E402
from t2l_generate import MISTRAL_7B  # noqa: E402

from t2ray.svf import SVFParam, decompose, factorized, mix, recomposed  # noqa: E402
from t2ray.svf.apply import compose_weights  # noqa: E402

LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=128256,
                  max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)
SMOKE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False)


def build_model(shape: dict, layers: int, device: str, dtype: torch.dtype,
                seed: int = 0) -> LlamaForCausalLM:
    """Random weights, made directly on `device`; the same seed gives the same weights."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape, num_hidden_layers=layers))
    return model.to(dtype).eval()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def svf_paths(shape: dict, layers: int, batch: int, seq: int, device: str, dtype: torch.dtype,
              repeats: int, workdir: Path) -> dict:
    model = build_model(shape, layers, device, dtype)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq),
                        generator=torch.Generator().manual_seed(0)).to(device)
    t0 = time.perf_counter()
    cache = decompose(model, "mlp", workdir / "svd", use_ray=False, progress=False)
    decompose_s = time.perf_counter() - t0
    checked = sorted(cache.matrices)[:3]  # one layer's gate, up and down projections
    cpu_factors = {n: tuple(t.double() for t in cache.factors(n)) for n in checked}
    cache.to(device)
    experts = random_experts(cache, 3)
    out: dict = {"matrices": len(cache.matrices), "decompose_s": decompose_s,
                 "max_svd_recon_error": cache.manifest["max_recon_error"],
                 "params": sum(p.numel() for p in model.parameters())}

    # checks: W' on the device against float64 on the CPU; factorized against recomposed
    e = experts[0]
    composed = compose_weights(cache, e, torch.float32)
    out["w_prime_rel_err_fp32"] = max(
        rel_err(composed[n], (u * e.param.scales(e.z[n].double(), s)) @ vh)
        for n, (u, s, vh) in cpu_factors.items())
    name = next(iter(cache.matrices))
    before = model.get_submodule(name).weight.detach().clone()
    with torch.inference_mode():
        with recomposed(model, cache, e):
            logits_rec = model(ids).logits.float()
        with factorized(model, cache, [e] * batch):
            logits_fac = model(ids).logits.float()
    out["factorized_vs_recomposed_logits_rel_err"] = rel_err(logits_fac, logits_rec)
    out["restore_bit_exact"] = bool(torch.equal(before, model.get_submodule(name).weight))
    del logits_rec, logits_fac, composed

    mixes = [mix(experts, torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(i)),
                                        0)) for i in range(batch)]
    for label, rows in (("prefill", ids), ("decode_shaped", ids[:, :1])):
        tokens = rows.numel()

        @torch.inference_mode()
        def forward(rows=rows):
            model(rows)

        times = {"base": median_time(forward, repeats)}
        with recomposed(model, cache, e):
            times["recomposed"] = median_time(forward, repeats)
        with factorized(model, cache, [e] * batch):
            times["factorized_one"] = median_time(forward, repeats)
        with factorized(model, cache, mixes):
            times["factorized_mix"] = median_time(forward, repeats)
        out[label] = {k: {"ms": 1000 * v, "tokens_per_s": tokens / v} for k, v in times.items()}

    def switch():
        with recomposed(model, cache, experts[1]):
            pass

    out["switch_ms"] = 1000 * median_time(switch, repeats)
    out["peak_gib"] = peak_gib()
    return out


def t2l_paths(device: str, repeats: int, smoke: bool) -> list[dict]:
    from t2ray.t2l.generate import to_loras
    from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, lora_targets, target_layers

    config = {**SMOKE, "model_type": "llama", "num_hidden_layers": 2} if smoke else MISTRAL_7B
    enc_dim = 64 if smoke else 1024
    n_layers, modules = lora_targets(config, ["q_proj", "v_proj"])
    layers = {t: [m.name for m in ms]
              for t, ms in target_layers(config, ["q_proj", "v_proj"]).items()}
    rows = []
    for variant in ("L", "M", "S"):
        torch.manual_seed(0)
        net = HyperLoRA(HyperConfig(variant, n_layers, modules, rank=8,
                                    encoder_dim=enc_dim)).eval()
        emb = torch.randn(16, enc_dim, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = net(emb)
            net.to(device)
            got = net(emb.to(device))
        err = max(rel_err(got[m][i], ref[m][i]) for m in ref for i in (0, 1))
        row = {"variant": variant, "modules": n_layers * len(modules),
               "gpu_vs_cpu_rel_err": err,
               "hypernet_params": sum(p.numel() for p in net.parameters())}
        for n in (1, 16):
            e = emb[:n].to(device)

            @torch.inference_mode()
            def generate(e=e, net=net):
                return to_loras(net(e), 8, 16.0, False, layers)

            row[f"ms_{n}"] = 1000 * median_time(generate, repeats)
        rows.append(row)
    return rows


def deepspeed_step(shape: dict, layers: int, batch: int, seq: int, device: str,
                   dtype: torch.dtype, stage: int, steps: int, workdir: Path) -> dict:
    from t2ray.distributed.deepspeed import initialize
    from t2ray.rl.policy import SVFPolicy

    model = build_model(shape, layers, device, dtype)  # same seed: the cache's weights
    cache = decompose(model, "mlp", workdir / "svd", use_ray=False, progress=False).to(device)
    policy = SVFPolicy(model, cache, SVFParam("reference"), residual=stage == 3)
    z0 = {k: v.detach().clone() for k, v in policy.z.items()}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    engine, _ = initialize(policy, opt, stage, 1.0, 1)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq),
                        generator=torch.Generator().manual_seed(0)).to(engine.device)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = engine(ids)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                               ids[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    moved = max(float((policy.z[k].detach().to(v.device) - v).abs().max()) for k, v in z0.items())
    return {"stage": stage, "steps": steps, "losses": losses, "max_abs_dz": moved,
            "step_ms": 1000 * min(times[1:] or times), "first_step_ms": 1000 * times[0],
            "trainable": sum(p.numel() for p in policy.z.values()), "peak_gib": peak_gib()}


def guarded(results: dict, key: str, fn, json_path: Path | None) -> None:
    """Run one section; a failure is recorded with its error, not raised. The results so far
    are written after every section, so a run stopped at its time limit keeps them."""
    t0 = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(f"[{key}] {time.perf_counter() - t0:.1f} s:", json.dumps(results[key])[:2000],
          flush=True)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def render(r: dict, args) -> str:
    lines = []
    svf = r.get("svf", {})
    shape = "smoke shapes" if args.smoke else (f"Llama-3.1-8B layer shapes, {args.layers} of 32 "
                                               "decoder layers, vocabulary 128256")
    lines.append(f"### SVF, bf16 ({shape}; targets mlp; batch {args.batch} x {args.seq} tokens)\n")
    if "error" in svf:
        lines.append(f"Failed: `{svf['error']}`\n")
    else:
        lines.append(
            f"Checks: W' composed on the card vs float64 (one layer's three matrices), max relative error "
            f"{svf['w_prime_rel_err_fp32']:.1e} (fp32); factorized vs recomposed logits, relative "
            f"error {svf['factorized_vs_recomposed_logits_rel_err']:.1e} (bf16); base weights "
            f"restored bit-exactly: {svf['restore_bit_exact']}. SVD cache of "
            f"{svf['matrices']} matrices built on the card in {svf['decompose_s']:.1f} s (max "
            f"reconstruction error {svf['max_svd_recon_error']:.1e}); an expert switch "
            f"(compose W' for every matrix, write, restore) {svf['switch_ms']:.1f} ms; peak "
            f"memory {fmt(svf['peak_gib'])} GiB.\n")
        lines.append("| forward | path | ms | tokens/s | x base |")
        lines.append("| --- | --- | ---: | ---: | ---: |")
        for label in ("prefill", "decode_shaped"):
            base = svf[label]["base"]["ms"]
            for path, v in svf[label].items():
                lines.append(f"| {label.replace('_', '-')} | {path.replace('_', ' ')} | "
                             f"{v['ms']:.2f} | {v['tokens_per_s']:,.0f} | {base / v['ms']:.2f} |")
        lines.append("\nDecode-shaped: one token per row, no KV cache (the matmul cost of a decode "
                     "step, not an engine's decode).\n")
    lines.append("### T2L generation (" + ("smoke shapes" if args.smoke else "Mistral-7B shapes")
                 + ", rank 8 on q_proj and v_proj, fp32)\n")
    t2l = r.get("t2l")
    if isinstance(t2l, dict):
        lines.append(f"Failed: `{t2l['error']}`\n")
    else:
        lines.append("| variant | modules | hypernet params | ms, 1 description | "
                     "ms, 16 descriptions | card vs CPU rel. error |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for row in t2l:
            lines.append(f"| {row['variant']} | {row['modules']} | {row['hypernet_params']:,} | "
                         f"{row['ms_1']:.2f} | {row['ms_16']:.2f} | "
                         f"{row['gpu_vs_cpu_rel_err']:.1e} |")
    lines.append(f"\n### DeepSpeed: SVF policy step, one process ({shape})\n")
    lines.append("| ZeRO | trainable z | step ms | first step ms | peak GiB | losses | max abs dz |")
    lines.append("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for stage in (2, 3):
        d = r.get(f"deepspeed_zero{stage}", {"error": "not run"})
        if "error" in d:
            lines.append(f"| {stage} | failed: `{d['error'][:200]}` | | | | | |")
        else:
            lines.append(f"| {stage} | {d['trainable']:,} | {d['step_ms']:.0f} | "
                         f"{d['first_step_ms']:.0f} | {fmt(d['peak_gib'])} | "
                         f"{', '.join(f'{x:.3f}' for x in d['losses'])} | "
                         f"{d['max_abs_dz']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--ds-steps", type=int, default=4)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md on the CPU too")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.layers, args.batch, args.seq, args.repeats = 2, 2, 16, 2
    shape = SMOKE if args.smoke else LLAMA31_8B
    results: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "torch": torch.__version__,
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                     "float32_matmul_precision": torch.get_float32_matmul_precision()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        guarded(results, "svf", lambda: svf_paths(shape, args.layers, args.batch, args.seq,
                                                   device, torch.bfloat16, args.repeats, workdir),
                args.json)
        if device == "cuda":
            torch.cuda.empty_cache()
        guarded(results, "t2l", lambda: t2l_paths(device, args.repeats, args.smoke), args.json)
        for stage in (2, 3):
            guarded(results, f"deepspeed_zero{stage}",
                    lambda stage=stage: deepspeed_step(shape, args.layers, 2, min(args.seq, 256),
                                                       device, torch.bfloat16, stage,
                                                       args.ds_steps, workdir), args.json)
    body = render(results, args)
    print(body)
    if device == "cuda" or args.write:
        command = "python bench/gpu_paths.py" + (" --smoke" if args.smoke else
                                                 f" --layers {args.layers}")
        write_section("gpu_paths", command, body)


if __name__ == "__main__":
    main()
