"""The serving graph with `engine: vllm` (vLLM's CPU wheel here): what it answers over HTTP
equals the HF engine run in this process, for experts (z-synced), per-request mixtures (one
engine call each, as vLLM has no per-row SVF), library and generated LoRAs (LoRARequests)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from t2ray.serve.adaptation import parse_adaptation
from t2ray.serve.loadgen import post
from t2ray.serve.local import serve_locally

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

QUESTIONS = ["What is 12 + 30?", "Write a function that returns x * 3."]


@pytest.fixture(scope="module")
def url():
    # engine actors reserve no Ray CPU (the factory's default), so both fit beside the replicas
    with serve_locally({"engine": "vllm", "batch_wait_s": 0.2}) as base:
        yield base + "/v1/chat/completions"


@pytest.fixture(scope="module")
def reference():
    from t2ray.engines.hf import HFEngine
    from t2ray.models import load_model
    from t2ray.serve.library import KIT_DIR, ServingLibrary
    from t2ray.svf.ops import decompose_model

    cache = decompose_model("tiny", "mlp")
    model, tok = load_model("tiny")
    return HFEngine(model, tok, svd_cache=cache), ServingLibrary.open(KIT_DIR, cache.fingerprint)


def _ask(url: str, adaptation: str, question: str) -> dict:
    status, body = post(url, {"model": "tiny", "max_tokens": 24, "temperature": 0,
                              "adaptation": adaptation,
                              "messages": [{"role": "user", "content": question}]})
    assert status == 200, body
    return body


def _local(engine, adapter, question: str) -> str:
    with engine.adapted(adapter):
        return engine.generate([question], max_new_tokens=24)[0].text


@pytest.mark.parametrize("adaptation", ["none", "expert:math", "fewshot:math-hard", "lora:code",
                                        'mix:{"math": 0.5, "reasoning": 0.5}'])
def test_vllm_graph_answers_like_the_hf_engine(url, reference, adaptation):
    engine, lib = reference
    adapter = lib.resolve(parse_adaptation(adaptation, "none", 8))
    for q in QUESTIONS:
        body = _ask(url, adaptation, q)
        assert body["choices"][0]["message"]["content"] == _local(engine, adapter, q)


def test_vllm_concurrent_mixtures_and_routing(url, reference):
    from t2ray.adapt.router import Router

    engine, lib = reference
    mixes = ['mix:{"math": 0.9, "code": 0.1}', 'mix:{"code": 0.6, "reasoning": 0.4}']
    with ThreadPoolExecutor(2) as pool:
        bodies = list(pool.map(lambda i: _ask(url, mixes[i], QUESTIONS[i]), range(2)))
    for i, body in enumerate(bodies):
        adapter = lib.resolve(parse_adaptation(mixes[i], "none", 8))
        assert body["choices"][0]["message"]["content"] == _local(engine, adapter, QUESTIONS[i])
    routed = Router(engine, lib.experts["route"]).route(QUESTIONS)
    for q, category in zip(QUESTIONS, routed):
        assert _ask(url, "classifier", q)["t2ray"]["category"] == category


def test_vllm_generated_adapter(url, reference):
    from t2ray.t2l.encoder import DescriptionEncoder
    from t2ray.t2l.generate import T2LCheckpoint

    engine, lib = reference
    description = "Sort the given list of numbers from the largest to the smallest."
    body = _ask(url, f"t2l:{description}", "3 9 4")
    ckpt = T2LCheckpoint.load(lib.t2l)
    lora = ckpt.generate(DescriptionEncoder(ckpt.encoder), [description])[0]
    assert body["choices"][0]["message"]["content"] == _local(engine, lora, "3 9 4")
