"""Serving pieces without a server: the adaptation grammar, few-shot profiles, the library's
start-up refusals, the packaged kit, the OpenAI request models and the stream pieces."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from t2ray.adapt.fewshot import alpha_mixture
from t2ray.adapt.profile import FewShotProfile, profile_names
from t2ray.artifacts import ArtifactError
from t2ray.serve.adaptation import Adaptation, AdaptationError, parse_adaptation
from t2ray.serve.library import KIT_DIR, ServingLibrary
from t2ray.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request


@pytest.fixture(scope="module")
def fingerprint():
    from t2ray.svf.ops import decompose_model

    return decompose_model("tiny", "mlp").fingerprint


# --- the adaptation grammar
@pytest.mark.parametrize("text,want", [
    ("none", Adaptation("none")),
    ("prompt", Adaptation("prompt")),
    (" classifier ", Adaptation("classifier")),
    ("expert:math", Adaptation("expert", name="math")),
    ("fewshot:math-hard", Adaptation("fewshot", name="math-hard")),
    ("lora:code", Adaptation("lora", name="code")),
    ("adapter:t2l-12", Adaptation("adapter", name="t2l-12")),
    ("t2l:Sort: numbers, descending", Adaptation("t2l", description="Sort: numbers, descending")),
    ('mix:{"math": 0.7, "code": 0.3}', Adaptation("mix", weights=(("code", 0.3), ("math", 0.7)))),
    ('mix:{"math": 1, "code": 0}', Adaptation("mix", weights=(("code", 0.0), ("math", 1.0)))),
])
def test_adaptation_forms(text, want):
    assert parse_adaptation(text, "none", 8) == want
    assert parse_adaptation(str(want), "none", 8) == want  # str() is the canonical id


def test_default_adaptation_applies_when_none_is_named():
    assert parse_adaptation(None, "expert:math", 8) == Adaptation("expert", name="math")


@pytest.mark.parametrize("text,message", [
    ("", "non-empty"), ("magic", "unknown adaptation"), ("prompt:x", "takes no argument"),
    ("expert:", "needs an argument"), ("mix:[1]", "JSON object"), ("mix:{", "JSON object"),
    ('mix:{"a": -1}', ">= 0"), ('mix:{"a": NaN}', "finite"), ('mix:{"a": Infinity}', "finite"),
    ('mix:{"a": true}', "finite"), ('mix:{"a": 0}', "all zero"),
    ("mix:" + json.dumps({f"e{i}": 1 for i in range(3)}), "at most 2"),
])
def test_adaptation_refusals(text, message):
    with pytest.raises(AdaptationError, match=message):
        parse_adaptation(text, "none", 2)


# --- few-shot profiles
def test_profile_round_trip_mixture_and_refusal(tmp_path, fingerprint):
    lib = ServingLibrary.open(KIT_DIR, fingerprint)
    experts = {n: lib.experts[n] for n in ("math", "code", "reasoning")}
    profile = FewShotProfile("math-hard", (0.5, 0.2, 0.1), ("math", "code", "reasoning"),
                             fingerprint)
    profile.save(tmp_path / "p")
    assert profile_names(tmp_path) == ["p"]
    loaded = FewShotProfile.load(tmp_path / "p", expect_fingerprint=fingerprint)
    assert loaded == profile
    want = alpha_mixture(list(experts.values()), [0.5, 0.2, 0.1])
    got = loaded.mixture(experts)
    assert all(torch.equal(got.z[n], want.z[n]) for n in want.z)
    with pytest.raises(ArtifactError, match="made for base model"):
        FewShotProfile.load(tmp_path / "p", expect_fingerprint="0" * 16)
    with pytest.raises(KeyError, match="does not hold"):
        loaded.mixture({"math": experts["math"]})
    with pytest.raises(ValueError, match="does not weigh"):
        FewShotProfile("t", (1.0, 2.0), ("math", "code", "reasoning"), fingerprint)
    # a profile found in mask space keeps its space and mixes in it
    masked = FewShotProfile("math-hard", (0.5, 0.2, 0.1), ("math", "code", "reasoning"),
                            fingerprint, mix_space="mask")
    masked.save(tmp_path / "m")
    got = FewShotProfile.load(tmp_path / "m").mixture(experts)
    want = alpha_mixture(list(experts.values()), [0.5, 0.2, 0.1], "mask")
    assert all(torch.equal(got.z[n], want.z[n]) for n in want.z)
    assert not all(torch.equal(got.z[n], loaded.mixture(experts).z[n]) for n in want.z)


def test_run_eval_writes_a_profile_per_fewshot_score(tmp_path, monkeypatch, fingerprint):
    import t2ray.experiments.unseen as unseen
    from t2ray.svf.ops import decompose_model

    def fake(engine, cache, lib, task, strategy, seed, *a, **k):
        return unseen.StrategyScore(task, strategy, seed, 0.5, 4, alpha=[0.3, 0.2, 0.1])

    monkeypatch.setattr(unseen, "evaluate_strategy", fake)
    monkeypatch.setattr(unseen, "start_scorers", lambda *a, **k: [])
    cache = decompose_model("tiny", "mlp")
    unseen.run_eval("tiny", KIT_DIR / "experts", ["math-hard"], ["fewshot"], [0, 1], tmp_path,
                    str(cache.root), n_test=4)
    assert profile_names(tmp_path / "profiles") == ["math-hard-seed0", "math-hard-seed1"]
    p = FewShotProfile.load(tmp_path / "profiles" / "math-hard-seed1", fingerprint)
    assert p.alpha == (0.3, 0.2, 0.1) and p.experts == ("math", "code", "reasoning")


# --- the library and the packaged kit
def test_packaged_kit_fits_the_bundled_base(fingerprint):
    kit = json.loads((KIT_DIR / "manifest.json").read_text())
    assert kit["base_fingerprint"] == fingerprint, (
        "the packaged serving kit was made on another base: rebuild it with "
        f"`{kit['command']}`")
    assert kit["command"].startswith("t2ray serve kit")
    lib = ServingLibrary.open(KIT_DIR, fingerprint)
    assert not lib.refused
    assert sorted(lib.experts) == ["code", "math", "reasoning", "route"]
    assert sorted(lib.loras) == ["code", "math", "reasoning"] and lib.t2l is not None
    assert kit["total_bytes"] == sum(kit["bytes"].values()) < 20e6


def test_library_refuses_artifacts_of_another_base_at_start_up(tmp_path, fingerprint, caplog):
    root = tmp_path / "lib"
    shutil.copytree(KIT_DIR, root)
    (root / "manifest.json").unlink()  # a plain library, not a kit
    foreign = json.loads((root / "experts" / "code" / "manifest.json").read_text())
    foreign["base_fingerprint"] = "f" * 16
    (root / "experts" / "code" / "manifest.json").write_text(json.dumps(foreign))
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        lib = ServingLibrary.open(root, fingerprint)
    assert "code" not in lib.experts and "math" in lib.experts
    assert "experts/code" in lib.refused and "made for base model" in lib.refused["experts/code"]
    # the profile mixes the refused expert, so it is refused too
    assert "profiles/math-hard" in lib.refused and not lib.profiles
    assert any("refused experts/code" in r.getMessage() for r in caplog.records)
    with pytest.raises(AdaptationError, match="available: math, reasoning, route"):
        lib.resolve(Adaptation("expert", name="code"))


def test_a_kit_of_another_base_is_refused_whole(tmp_path):
    shutil.copytree(KIT_DIR, tmp_path / "kit")
    with pytest.raises(ArtifactError, match="serving kit made for base model"):
        ServingLibrary.open(tmp_path / "kit", "0" * 16)


def test_routers_abstain_below_the_thresholds_their_library_keeps(tmp_path, fingerprint):
    """The kit keeps both routers' thresholds (chosen on route validation); the served router
    answers `other` below its library's threshold, reports its confidence, and a thresholds file
    of another base is refused (its routers then never abstain)."""
    import math

    from t2ray.adapt.router import Router
    from t2ray.serve.deployments import TaskRouter
    from t2ray.serve.library import write_routing
    from t2ray.svf.ops import decompose_model

    kit = ServingLibrary.open(KIT_DIR, fingerprint)
    assert set(kit.routing) == {"prompt", "classifier"}
    assert all(0 <= r["threshold"] < 1 and r["n"] == 200 for r in kit.routing.values())
    root = tmp_path / "lib"
    shutil.copytree(KIT_DIR, root)
    (root / "manifest.json").unlink()  # a plain library, not a kit
    write_routing(root, fingerprint, {"prompt": {"threshold": 1.0}, "classifier": {
        "threshold": 0.0}}, "test")
    router = TaskRouter.func_or_class({}, fingerprint, str(decompose_model("tiny", "mlp").root),
                                      str(root))
    questions = ["What is 12 + 30?", "Write a function that returns x * 3.",
                 "Write a short poem about rain."]
    out = router._route([("prompt", q) for q in questions] +
                        [("classifier", q) for q in questions])
    assert [o["category"] for o in out[:3]] == ["other"] * 3
    assert all(o["threshold"] == 1.0 and 0.25 <= o["confidence"] < 1 for o in out[:3])
    unthresholded = Router(router.engine, router.library.experts["route"]).route(questions)
    assert [o["category"] for o in out[3:]] == unthresholded
    for o in out:  # the confidence is the top label's share of the label probabilities
        probs = [math.exp(v) for v in o["scores"].values()]
        assert o["confidence"] == pytest.approx(max(probs) / sum(probs), abs=1e-3)
    write_routing(root, "f" * 16, {"prompt": {"threshold": 1.0}}, "test")
    lib = ServingLibrary.open(root, fingerprint)
    assert "routing" in lib.refused and lib.thresholds() == {}


def test_library_mixture_equals_mix(fingerprint):
    from t2ray.svf.expert import mix

    lib = ServingLibrary.open(KIT_DIR, fingerprint)
    got = lib.resolve(parse_adaptation('mix:{"math": 0.25, "code": 0.75}', "none", 8))
    want = mix([lib.experts["code"], lib.experts["math"]], torch.tensor([0.75, 0.25]))
    assert all(torch.equal(got.z[n], want.z[n]) for n in want.z)


# --- the wire format
def test_requests_keep_unknown_fields_and_refuse_what_they_cannot_serve():
    req = parse_request(ChatCompletionRequest, json.dumps({
        "model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": [{"type": "text",
                                                                    "text": "hi"}]}],
        "adaptation": "expert:math", "frequency_penalty": 0}).encode())
    assert req.to_prompt().user == "hi" and req.to_prompt().system == "Be brief."
    assert req.adaptation == "expert:math" and req.model_extra["frequency_penalty"] == 0
    turns = ChatCompletionRequest(model="t", messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}])
    with pytest.raises(ValueError, match="multi-turn"):
        turns.to_prompt()
    for body, param in (({"model": "t", "prompt": "x", "echo": True}, "echo"),
                        ({"model": "t", "prompt": "x", "logprobs": 2}, "logprobs"),
                        ({"model": "t", "prompt": "x", "temperature": 3}, "temperature"),
                        ({"prompt": "x"}, "model")):
        with pytest.raises(APIError) as e:
            parse_request(CompletionRequest, json.dumps(body).encode())
        assert e.value.status == 400 and e.value.param == param
    with pytest.raises(ValueError, match="one prompt"):
        CompletionRequest(model="t", prompt=["a", "b"]).to_prompt()


def test_stream_pieces_join_to_the_text():
    from t2ray.models import load_tokenizer
    from t2ray.serve.ingress import _pieces

    tok = load_tokenizer("tiny")
    ids = tok("The answer is 42. def f(x): return x", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    pieces = _pieces(tok, ids, text)
    assert "".join(pieces) == text and len(pieces) > 5
    # a completion cut at a stop string: its ids decode past the text kept
    assert "".join(_pieces(tok, ids, text[:7])) == text[:7]
    assert _pieces(tok, ids, "unrelated") == ["unrelated"]
