"""SVF core: parameter counts, SVD cache, the two exact application paths, mixing, transfer."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig

from t2ray.models import weights_fingerprint
from t2ray.svf import (
    ExpertLibrary,
    ExpertVector,
    SVDCache,
    SVFParam,
    count_lora_params,
    count_svf_params,
    decompose,
    factorized,
    mix,
    recomposed,
    transfer,
)
from t2ray.svf import cache as cache_mod

SHAPES = dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=64)
LLAMA3_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def random_model(config_cls=LlamaConfig, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_cls(**SHAPES)).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = random_model()
    cache = decompose(model, "all", tmp_path_factory.mktemp("svd"), use_ray=False, progress=False)
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    return model, cache, ids


def random_expert(cache, param, seed):
    g = torch.Generator().manual_seed(seed)
    z = {n: param.identity(r) + 0.5 * torch.randn(r, generator=g)
         for n, r in cache.ranks().items()}
    return ExpertVector.for_cache(cache, z, param, task=f"t{seed}")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_param_counts_match_the_paper_for_llama3_8b():
    assert count_svf_params(LLAMA3_8B, "mlp") == 393_216
    assert count_svf_params(LLAMA3_8B, "attn") == 163_840
    assert count_svf_params(LLAMA3_8B, "all") == 393_216 + 163_840
    assert count_lora_params(LLAMA3_8B, 16, ("q_proj", "v_proj")) == 6_815_744


def test_cache_reconstructs_every_matrix_and_records_it(setup):
    model, cache, _ = setup
    assert len(cache.matrices) == 2 * 5
    modules = dict(model.named_modules())
    for name, meta in cache.matrices.items():
        u, s, vh = cache.factors(name)
        w = modules[name].weight.detach()
        assert (meta.out_features, meta.in_features) == tuple(w.shape)
        assert rel_err((u.double() * s.double()) @ vh.double(), w.double()) < 1e-5
        assert torch.all(s[:-1] >= s[1:])  # sorted by singular value
    assert cache.manifest["max_recon_error"] < 1e-5
    assert cache.fingerprint == weights_fingerprint(model)
    # GQA: v_proj is (kv_heads * head_dim, hidden) = (32, 48)
    v = cache.matrices["model.layers.0.self_attn.v_proj"]
    assert (v.out_features, v.in_features, v.rank) == (32, 48, 32)


@pytest.mark.parametrize("kind", ["reference", "linear"])
def test_identity_expert_reproduces_the_base_model(setup, kind):
    model, cache, ids = setup
    param = SVFParam(kind)
    ident = ExpertVector({n: param.identity(r) for n, r in cache.ranks().items()}, param,
                         cache.fingerprint)
    base = logits(model, ids)
    with recomposed(model, cache, ident):
        assert rel_err(logits(model, ids), base) < 1e-5
    with factorized(model, cache, [ident] * 3):
        assert rel_err(logits(model, ids), base) < 1e-5


def test_reference_parameterisation_in_float64():
    """W' = U diag(sigma*m) V^T * sum(sigma)/sum(sigma*m), m = sigmoid(z)*max_mult."""
    torch.manual_seed(0)
    w = torch.randn(7, 5, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    z = torch.randn(5, dtype=torch.float64)
    m = 2.0 / (1.0 + torch.exp(-z))
    expected = u @ torch.diag(s * m) @ vh * (s.sum() / (s * m).sum())
    got = (u * SVFParam("reference", max_mult=2.0).scales(z, s)) @ vh
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose((u * SVFParam("linear").scales(z, s)) @ vh, u @ torch.diag(s * z) @ vh)


def test_experts_follow_the_factors_device(setup):
    """Experts are stored on the CPU; sigma' and W' are computed where the factors live (a GPU
    in serving). The meta device stands in for the GPU: only where the result lands is checked."""
    _, cache, _ = setup
    name, rank = next(iter(cache.ranks().items()))
    for kind in ("reference", "linear"):
        sigma = torch.ones(rank, device="meta")
        assert SVFParam(kind).scales(torch.zeros(rank), sigma).device.type == "meta"
    moved = SVDCache(cache.root).to("meta")
    assert all(t.device.type == "meta" for t in moved.factors(name))
    assert all(t.device.type == "cpu" for t in cache.factors(name))  # the original is untouched


@pytest.mark.parametrize("kind", ["reference", "linear"])
def test_recompose_equals_factorized_and_restores_weights(setup, kind):
    model, cache, ids = setup
    expert = random_expert(cache, SVFParam(kind), seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with recomposed(model, cache, expert):
        via_recompose = logits(model, ids)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with factorized(model, cache, [expert] * 3):
        via_factorized = logits(model, ids)
    assert rel_err(via_factorized, via_recompose) < 1e-5
    assert rel_err(via_recompose, logits(model, ids)) > 1e-3  # the expert does change the model


def test_a_batch_of_three_mixtures_equals_three_single_runs(setup):
    model, cache, ids = setup
    param = SVFParam("reference")
    experts = [random_expert(cache, param, seed=s) for s in (10, 11, 12)]
    mixes = [mix(experts, torch.tensor(a)) for a in ([1.0, 0, 0], [0.2, 0.5, 0.3], [0, 0.7, 0.9])]
    with factorized(model, cache, mixes):
        batched = logits(model, ids)
    for row, mixture in enumerate(mixes):
        with recomposed(model, cache, mixture):
            single = logits(model, ids[row : row + 1])
        assert rel_err(batched[row : row + 1], single) < 1e-5


def test_mix_weights_per_expert_and_per_matrix(setup):
    _, cache, _ = setup
    param = SVFParam("linear")
    e1, e2 = random_expert(cache, param, 1), random_expert(cache, param, 2)
    names = sorted(cache.ranks())
    m = mix([e1, e2], torch.tensor([0.25, 0.75]))
    assert all(torch.allclose(m.z[n], 0.25 * e1.z[n] + 0.75 * e2.z[n]) for n in names)
    alpha = torch.rand(2, len(names))
    m = mix([e1, e2], alpha)
    for j, n in enumerate(names):
        assert torch.allclose(m.z[n], alpha[0, j] * e1.z[n] + alpha[1, j] * e2.z[n])
    with pytest.raises(ValueError, match="alpha has shape"):
        mix([e1, e2], torch.ones(3))
    with pytest.raises(ValueError, match="different base models or parameterisations"):
        mix([e1, random_expert(cache, SVFParam("reference"), 3)], torch.ones(2))


def test_mask_space_mix_is_the_references_linear_mix_of_multipliers_in_float64(setup):
    """W' of the mask-space mixture = U diag(sigma * m) V^T * sum(sigma) / sum(sigma * m) with
    m = sum_k alpha_k sigmoid(z_k) * max_mult, computed directly in float64."""
    _, cache, _ = setup
    param = SVFParam("reference", max_mult=2.0)
    experts = [random_expert(cache, param, seed) for seed in (5, 6)]
    alpha = torch.tensor([0.3, 0.5])
    mixed = mix(experts, alpha, space="mask")
    for name in list(cache.matrices)[:3]:
        u, s, vh = (t.double() for t in cache.factors(name))
        m = sum(a * torch.sigmoid(e.z[name].double()) * 2.0 for a, e in zip(alpha.double(),
                                                                           experts))
        expected = (u * (s * m * s.sum() / (s * m).sum())) @ vh
        got = (u * param.scales(mixed.z[name].double(), s)) @ vh
        assert rel_err(got, expected) < 1e-5
    # one-hot alpha gives the expert back in either space; alpha = 0 keeps the base in mask space
    one = mix(experts, torch.tensor([1.0, 0.0]), space="mask")
    name = next(iter(cache.matrices))
    u, s, vh = (t.double() for t in cache.factors(name))
    assert rel_err((u * param.scales(one.z[name].double(), s)) @ vh,
                   (u * param.scales(experts[0].z[name].double(), s)) @ vh) < 1e-5
    base = mix(experts, torch.zeros(2), space="mask")
    assert all(torch.equal(z, param.identity(len(z))) for z in base.z.values())
    with pytest.raises(ValueError, match="alpha >= 0"):
        mix(experts, torch.tensor([-0.1, 1.0]), space="mask")
    with pytest.raises(ValueError, match="mixing space"):
        mix(experts, alpha, space="logits")


def test_expert_files_and_checks(setup, tmp_path):
    _, cache, _ = setup
    expert = random_expert(cache, SVFParam("reference"), seed=4)
    lib = ExpertLibrary(tmp_path)
    lib.add("math", expert)
    assert lib.names() == ["math"]
    loaded = lib.get("math", expect_fingerprint=cache.fingerprint, expect_ranks=cache.ranks())
    assert all(torch.equal(loaded.z[n], expert.z[n]) for n in expert.z)
    assert loaded.param == expert.param and loaded.num_params == expert.num_params
    manifest = json.loads((tmp_path / "math" / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == cache.fingerprint and manifest["ranks"]
    with pytest.raises(ValueError, match="0123456789abcdef") as err:
        lib.get("math", expect_fingerprint="0123456789abcdef")
    assert cache.fingerprint in str(err.value)
    bad = dict(cache.ranks())
    bad[next(iter(bad))] += 1
    with pytest.raises(ValueError, match="does not fit"):
        lib.get("math", expect_ranks=bad)
    with pytest.raises(ValueError, match="unknown SVF parameterisation"):
        SVFParam("cubic")


def test_stale_cache_is_refused(tmp_path):
    model = random_model(seed=5)
    decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.01)
    with pytest.raises(ValueError, match="made for base model"):
        decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    with pytest.raises(ValueError, match="made for base model"):
        SVDCache(tmp_path).check_model(model)


def test_interrupted_decomposition_resumes(tmp_path, monkeypatch):
    model = random_model(seed=6)
    real = cache_mod.decompose_shard
    calls = []

    def flaky(weights, threads=1):
        calls.append(sorted(weights))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-run
        return real(weights, threads)

    monkeypatch.setattr(cache_mod, "decompose_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    assert (tmp_path / "progress.json").exists() and not (tmp_path / "manifest.json").exists()
    cache = decompose(model, "mlp", tmp_path, use_ray=False, progress=False)
    assert len(calls) == 3  # shard 0 once, shard 1 failed once then done; nothing redone
    assert len(cache.matrices) == 6 and not (tmp_path / "progress.json").exists()


def test_cross_model_transfer(setup, tmp_path):
    llama, llama_cache, ids = setup
    mistral = random_model(MistralConfig, seed=7)
    m_cache = decompose(mistral, "all", tmp_path, use_ray=False, progress=False)
    expert = random_expert(llama_cache, SVFParam("reference"), seed=8)
    moved = transfer(expert, m_cache)
    assert moved.base_fingerprint == m_cache.fingerprint
    assert all(torch.equal(moved.z[n], expert.z[n]) for n in expert.z)  # same names here
    with recomposed(mistral, m_cache, moved):
        adapted = logits(mistral, ids)
    assert rel_err(adapted, logits(mistral, ids)) > 1e-3
    shuffled = transfer(expert, m_cache, shuffle=True)
    name = next(iter(expert.z))
    assert not torch.equal(shuffled.z[name], expert.z[name])
    assert torch.equal(shuffled.z[name].sort().values, expert.z[name].sort().values)
    wider = AutoModelForCausalLM.from_config(LlamaConfig(**{**SHAPES, "intermediate_size": 96}))
    w_cache = decompose(wider, "all", tmp_path / "wide", use_ray=False, progress=False)
    with pytest.raises(ValueError, match=r"\(80, 48\) on the source model, \(96, 48\)"):
        transfer(expert, w_cache)
    with pytest.raises(ValueError, match="belongs to base"):
        with recomposed(mistral, m_cache, expert):
            pass


def test_transposed_fused_modules_gpt2_conv1d(tmp_path):
    """GPT-2 stores W transposed (Conv1D) and fuses q, k, v into c_attn."""
    torch.manual_seed(9)
    model = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    cache = decompose(model, ["c_attn", "c_fc"], tmp_path, use_ray=False, progress=False)
    attn = cache.matrices["transformer.h.0.attn.c_attn"]
    assert attn.transposed and (attn.out_features, attn.in_features) == (96, 32)
    ids = torch.randint(0, 64, (2, 8))
    expert = random_expert(cache, SVFParam("linear"), seed=1)
    with recomposed(model, cache, expert):
        via_recompose = logits(model, ids)
    with factorized(model, cache, [expert] * 2):
        assert rel_err(logits(model, ids), via_recompose) < 1e-5
