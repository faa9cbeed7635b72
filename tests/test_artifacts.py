"""One manifest format for every artifact kind: round trips, the same refusals with the same
wording (not this kind, newer format, other base model), older manifests, PEFT compatibility,
and module names and shapes derived from a config alone."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config

from t2ray.artifacts import ArtifactError
from t2ray.lora import batched_lora, export_peft, import_peft
from t2ray.lora.peft_io import LORA_ADAPTER
from t2ray.lora.weights import init_lora
from t2ray.models import load_model, weights_fingerprint
from t2ray.svf import ExpertVector, SVDCache, SVFParam, config_targets, find_targets
from t2ray.svf.cache import SVD_CACHE
from t2ray.svf.expert import SVF_EXPERT
from t2ray.t2l.generate import T2L_CHECKPOINT, T2LCheckpoint
from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, lora_targets

OTHER = "0123456789abcdef"  # a fingerprint no test model has


def random_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    lw = init_lora(model, 4, 8.0, use_rslora=True, generator=g)
    lw.b = {n: 0.1 * torch.randn(b.shape, generator=g) for n, b in lw.b.items()}
    return lw


def make_cache(base, out):
    shutil.copytree(base["cache"].root, out)  # the session's cache stays untouched
    return SVDCache(out)


def load_cache(path, expect_fingerprint=None):
    cache = SVDCache(path)
    if expect_fingerprint:
        cache.check_model(None, expect_fingerprint)
    return cache


def make_expert(base, out):
    cache = base["cache"]
    z = {n: torch.randn(r, generator=torch.Generator().manual_seed(1))
         for n, r in cache.ranks().items()}
    expert = ExpertVector.for_cache(cache, z, SVFParam("reference"), task="math")
    expert.save(out)
    return expert


def make_lora(base, out):
    lora = random_lora(base["model"])
    export_peft(lora, out, base_model=str(base["path"]), base_fingerprint=base["fingerprint"])
    return lora


def make_t2l(base, out):
    n, modules = lora_targets(base["config"], ["q_proj", "v_proj"])
    torch.manual_seed(0)
    net = HyperLoRA(HyperConfig("M", n, modules, rank=4, encoder_dim=8, latent=16, head_in=20))
    ckpt = T2LCheckpoint(net.eval(), "fake", 8.0, True, "tiny-random", base["config"],
                         base_fingerprint=base["fingerprint"])
    ckpt.save(out)
    return ckpt


def same_cache(a, b):
    assert a.matrices == b.matrices and a.fingerprint == b.fingerprint
    name = next(iter(a.matrices))
    assert all(torch.equal(x, y) for x, y in zip(a.factors(name), b.factors(name)))


def same_expert(a, b):
    assert (a.param, a.base_fingerprint, a.targets, a.task, a.shapes) == \
        (b.param, b.base_fingerprint, b.targets, b.task, b.shapes)
    assert all(torch.equal(a.z[n], b.z[n]) for n in a.z)


def same_lora(a, b):
    assert a.scale == pytest.approx(b.scale) and set(a.a) == set(b.a)
    assert all(torch.equal(a.a[n], b.a[n]) and torch.equal(a.b[n], b.b[n]) for n in a.a)


def same_t2l(a, b):
    assert (a.modules, a.base_fingerprint, a.net.cfg) == (b.modules, b.base_fingerprint, b.net.cfg)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# kind: (format, make, load(path, expect_fingerprint), same, the fix a fingerprint refusal names)
KINDS = {
    "svd-cache": (SVD_CACHE, make_cache, load_cache, same_cache, "t2ray svf decompose"),
    "svf-expert": (SVF_EXPERT, make_expert, ExpertVector.load, same_expert, "t2ray svf transfer"),
    "lora": (LORA_ADAPTER, make_lora, import_peft, same_lora, "t2ray lora train"),
    "t2l": (T2L_CHECKPOINT, make_t2l, T2LCheckpoint.load, same_t2l, "t2ray t2l train"),
}


@pytest.fixture(scope="module")
def base(tiny_random):
    path, cache = tiny_random
    model = load_model(path)[0]
    return {"path": path, "cache": cache, "model": model, "fingerprint": cache.fingerprint,
            "config": model.config.to_dict()}


def edit_manifest(path, kind, change):
    file = path / kind.filename
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", KINDS)
def test_round_trip_records_the_common_fields(base, tmp_path, name):
    kind, make, load, same, _ = KINDS[name]
    original = make(base, tmp_path / name)
    same(original, load(tmp_path / name, base["fingerprint"]))
    manifest = json.loads((tmp_path / name / kind.filename).read_text())
    assert manifest["format"] == kind.name and manifest["format_version"] == kind.version
    assert manifest["base_fingerprint"] == base["fingerprint"] and manifest["t2ray_version"]
    assert manifest["modules"] and all(len(s) == 2 for s in manifest["modules"].values())


@pytest.mark.parametrize("name", KINDS)
def test_not_this_kind_is_refused_with_how_to_make_one(base, tmp_path, name):
    kind, make, load, _, _ = KINDS[name]
    with pytest.raises(ArtifactError, match=f"is not {kind.what} \\(no .*\\); .*t2ray "):
        load(tmp_path)
    make(base, tmp_path / name)
    edit_manifest(tmp_path / name, kind, lambda m: m.update(format="t2ray.something-else"))
    with pytest.raises(ArtifactError, match=f"is not {kind.what} .*'t2ray.something-else'"):
        load(tmp_path / name)


@pytest.mark.parametrize("name", KINDS)
def test_a_newer_format_version_is_refused(base, tmp_path, name):
    kind, make, load, _, _ = KINDS[name]
    make(base, tmp_path / name)
    edit_manifest(tmp_path / name, kind, lambda m: m.update(format_version=kind.version + 1))
    with pytest.raises(ArtifactError, match="written by a newer t2ray.*; upgrade t2ray"):
        load(tmp_path / name)


@pytest.mark.parametrize("name", KINDS)
def test_another_base_model_is_refused_with_the_fix(base, tmp_path, name):
    kind, make, load, _, fix = KINDS[name]
    make(base, tmp_path / name)
    with pytest.raises(ArtifactError) as err:
        load(tmp_path / name, OTHER)
    assert f"is {kind.what} made for base model {base['fingerprint']}, this base is {OTHER}; " \
        in str(err.value) and fix in str(err.value)


def test_a_stale_cache_is_refused_for_a_model_in_the_same_words(base, tmp_path):
    cache = make_cache(base, tmp_path / "svd")
    other = load_model(base["path"])[0]
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(1.01)
    with pytest.raises(ArtifactError, match=f"made for base model {base['fingerprint']}, this "
                                            f"base is {weights_fingerprint(other)}"):
        cache.check_model(other)


def test_manifests_from_before_format_versions_still_load(base, tmp_path):
    def unversioned(m):
        del m["format_version"], m["modules"]

    cache = make_cache(base, tmp_path / "svd")
    edit_manifest(tmp_path / "svd", SVD_CACHE, unversioned)
    same_cache(cache, SVDCache(tmp_path / "svd"))

    expert = make_expert(base, tmp_path / "expert")  # v1 kept its shapes under `shapes`
    edit_manifest(tmp_path / "expert", SVF_EXPERT,
                  lambda m: m.update(format_version=1, shapes=m.pop("modules")))
    same_expert(expert, ExpertVector.load(tmp_path / "expert", base["fingerprint"]))

    lora = make_lora(base, tmp_path / "lora")  # no format, no fingerprint: nothing to check
    (tmp_path / "lora" / LORA_ADAPTER.filename).write_text(json.dumps(
        {"t2ray_version": "0.1.0", "rank": 4, "alpha": 8.0, "use_rslora": True, "scale": 4.0,
         "meta": {}}))
    same_lora(lora, import_peft(tmp_path / "lora", OTHER))

    def t2l_v1(m):
        del m["modules"], m["base_fingerprint"]
        m["format_version"] = 1

    ckpt = make_t2l(base, tmp_path / "t2l")  # v1: module names discovered from base_config
    edit_manifest(tmp_path / "t2l", T2L_CHECKPOINT, t2l_v1)
    old = T2LCheckpoint.load(tmp_path / "t2l", OTHER)  # no fingerprint recorded: no check
    assert old.base_fingerprint is None and old.modules == ckpt.modules
    assert all(torch.equal(v, old.net.state_dict()[k]) for k, v in ckpt.net.state_dict().items())


def test_lora_export_records_the_base_and_peft_still_loads_it(tmp_path):
    model = load_model("tiny")[0].eval()  # PEFT wraps it in place: a fresh copy
    fingerprint = weights_fingerprint(model)
    lora = random_lora(model)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), batched_lora(model, [lora, lora]):
        ours = model(ids).logits
    export_peft(lora, tmp_path, base_model="tiny", base_fingerprint=fingerprint)
    manifest = json.loads((tmp_path / LORA_ADAPTER.filename).read_text())
    assert manifest["base_fingerprint"] == fingerprint and set(manifest["modules"]) == set(lora.a)
    import_peft(tmp_path, expect_fingerprint=fingerprint)
    peft_model = PeftModel.from_pretrained(model, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours, atol=1e-5, rtol=1e-5)


def test_a_plain_peft_directory_imports_without_a_manifest(base, tmp_path):
    lora = make_lora(base, tmp_path)
    (tmp_path / LORA_ADAPTER.filename).unlink()
    same_lora(lora, import_peft(tmp_path, expect_fingerprint=OTHER))


def shapes(matrices):
    return [(m.name, m.out_features, m.in_features, m.transposed) for m in matrices]


def test_shapes_from_a_config_are_the_instantiated_models(tiny_model):
    model = tiny_model[0]
    assert shapes(config_targets(model.config, "all")) == shapes(find_targets(model, "all"))
    assert shapes(config_targets(model.config.to_dict(), "all")) == \
        shapes(find_targets(model, "all"))

    gpt2 = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    targets = ["c_attn", "c_proj", "c_fc"]
    from_config = shapes(config_targets(gpt2, targets))
    assert from_config == shapes(find_targets(AutoModelForCausalLM.from_config(gpt2), targets))
    assert ("transformer.h.0.attn.c_attn", 96, 32, True) in from_config  # Conv1D: (in, out)
    with pytest.raises(ValueError, match=r"matches the targets \['q_proj'\]"):
        config_targets(gpt2, ["c_attn", "q_proj"])
