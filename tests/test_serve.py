"""The serving graph over real HTTP on loopback: the official openai client, every adaptation
mode checked against the library run in-process, the refusals, the API key and the metrics.
One app for the module (a Serve app takes about 20 s to come up here)."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from t2ray.serve.local import free_port, serve_locally

KEY = "test-key-123"
QUESTIONS = ["What is 12 + 30?", "Write a function that returns x * 3.",
             "Which is larger: 7 or 4? Answer A or B."]


@pytest.fixture(scope="module")
def server():
    """(base URL, Prometheus port) of the module's app."""
    metrics_port = free_port()
    # a longer batch window than the default so that concurrent requests reliably share one
    with serve_locally({"batch_wait_s": 0.2, "limits": {"max_tokens": 64, "max_body_bytes": 20_000}},
                 env={"T2RAY_API_KEY": KEY}, metrics_port=metrics_port) as base:
        yield base, metrics_port


@pytest.fixture(scope="module")
def url(server):
    return server[0]


def http(url: str, path: str, body=None, key: str | None = KEY, raw: bytes | None = None,
         method: str | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def chat(url: str, adaptation: str | None, question: str = QUESTIONS[0], max_tokens: int = 24,
         **extra):
    body = {"model": "tiny", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, **extra}
    if adaptation is not None:
        body["adaptation"] = adaptation
    return http(url, "/v1/chat/completions", body)


@pytest.fixture(scope="module")
def reference():
    """The library and an HF engine in this process: what every served answer must equal."""
    from t2ray.engines.hf import HFEngine
    from t2ray.models import load_model
    from t2ray.serve.library import KIT_DIR, ServingLibrary
    from t2ray.svf.ops import decompose_model

    cache = decompose_model("tiny", "mlp")
    model, tok = load_model("tiny")
    engine = HFEngine(model, tok, svd_cache=cache, name="tiny")
    return engine, ServingLibrary.open(KIT_DIR, cache.fingerprint)


def local_answer(engine, adapter, question: str = QUESTIONS[0], max_tokens: int = 24) -> str:
    with engine.adapted(adapter):
        return engine.generate([question], max_new_tokens=max_tokens)[0].text


def answer_of(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


# --- the openai client
def test_openai_client_chat_completions_and_streaming(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    chat_reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=24,
        temperature=0, extra_body={"adaptation": "expert:math"})
    text = chat_reply.choices[0].message.content
    assert text and chat_reply.usage.completion_tokens > 0
    assert chat_reply.model_extra["t2ray"]["expert"] == "math"
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=24,
        temperature=0, stream=True, extra_body={"adaptation": "expert:math"})
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2 and "".join(pieces) == text
    completion = client.completions.create(model="tiny", prompt=QUESTIONS[0], max_tokens=24,
                                           temperature=0, extra_body={"adaptation": "none"})
    streamed = client.completions.create(model="tiny", prompt=QUESTIONS[0], max_tokens=24,
                                         temperature=0, stream=True,
                                         extra_body={"adaptation": "none"})
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text != ""


# --- every adaptation mode against the library
@pytest.mark.parametrize("strategy", ["prompt", "classifier"])
def test_routed_strategies_answer_with_the_expert_the_router_picks(url, reference, strategy):
    from t2ray.adapt.router import Router

    engine, lib = reference
    router = Router(engine, lib.experts["route"] if strategy == "classifier" else None,
                    threshold=lib.thresholds()[strategy])  # the kit's, chosen on validation
    expected = router.route(QUESTIONS)
    for question, category in zip(QUESTIONS, expected):
        status, headers, body = chat(url, strategy, question)
        assert status == 200, body
        info = body["t2ray"]
        assert info["category"] == category
        assert set(info["router_scores"]) == set(router.categories)
        assert info["router_threshold"] == router.threshold
        top = max(info["router_scores"], key=info["router_scores"].get)
        assert category == ("other" if info["router_confidence"] < router.threshold else top)
        assert info["first_pass_s"] > 0 and info["total_s"] >= info["first_pass_s"]
        expert = None if category == "other" else lib.experts[category]
        assert headers["x-t2ray-expert"] == ("base" if expert is None else category)
        assert answer_of(body) == local_answer(engine, expert, question)


@pytest.mark.parametrize("adaptation", ["none", "expert:math", "expert:code", "lora:reasoning",
                                        "fewshot:math-hard", 'mix:{"math": 0.7, "code": 0.3}'])
def test_library_adaptations_equal_the_engine_run_in_process(url, reference, adaptation):
    from t2ray.serve.adaptation import parse_adaptation

    engine, lib = reference
    adapter = lib.resolve(parse_adaptation(adaptation, "none", 8))
    status, headers, body = chat(url, adaptation)
    assert status == 200, body
    assert answer_of(body) == local_answer(engine, adapter)
    assert body["t2ray"]["strategy"] == adaptation.split(":")[0]
    if adaptation.startswith(("mix", "fewshot")):
        assert body["t2ray"]["mixture"]


def test_concurrent_mixtures_share_one_batch_and_equal_their_single_runs(url, reference):
    from t2ray.serve.adaptation import parse_adaptation

    engine, lib = reference
    mixes = ['mix:{"math": 0.9, "reasoning": 0.1}', 'mix:{"code": 0.5, "reasoning": 0.5}']
    for _attempt in range(3):  # the two must reach the replica within one batch window
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda i: chat(url, mixes[i], QUESTIONS[i]), range(2)))
        if all(r[2]["t2ray"]["batch_size"] == 2 for r in results):
            break
    assert [r[2]["t2ray"]["batch_size"] for r in results] == [2, 2]
    for i, (status, _, body) in enumerate(results):
        assert status == 200
        adapter = lib.resolve(parse_adaptation(mixes[i], "none", 8))
        assert answer_of(body) == local_answer(engine, adapter, QUESTIONS[i])


def test_t2l_generates_an_adapter_for_an_unseen_description_and_caches_it(url, reference):
    from t2ray.t2l.encoder import DescriptionEncoder
    from t2ray.t2l.generate import T2LCheckpoint

    engine, lib = reference
    description = "Sort the given list of numbers from the largest to the smallest."
    status, headers, first = chat(url, f"t2l:{description}", "3 9 4")
    assert status == 200, first
    assert first["t2ray"]["cache_hit"] is False and first["t2ray"]["adapter_id"].startswith("t2l-")
    status, _, again = chat(url, f"t2l:{description}", "3 9 4")
    assert again["t2ray"]["cache_hit"] is True
    assert again["t2ray"]["adapter_id"] == first["t2ray"]["adapter_id"]
    ckpt = T2LCheckpoint.load(lib.t2l)
    lora = ckpt.generate(DescriptionEncoder(ckpt.encoder), [description])[0]
    assert answer_of(first) == answer_of(again) == local_answer(engine, lora, "3 9 4")
    # the same adapter by id, and through POST /v1/adapters (same description: a hit)
    status, _, made = http(url, "/v1/adapters", {"description": description})
    assert status == 200 and made["id"] == first["t2ray"]["adapter_id"] and made["cached"]
    status, headers, by_id = chat(url, f"adapter:{made['id']}", "3 9 4")
    assert status == 200 and answer_of(by_id) == answer_of(first)
    assert headers["x-t2ray-expert"] == f"adapter:{made['id']}"


def test_catalog_models_and_health(url, reference):
    _, lib = reference
    status, _, catalog = http(url, "/v1/experts")
    assert status == 200 and catalog["base_fingerprint"] == lib.fingerprint
    assert {e["name"] for e in catalog["experts"]} == {"math", "code", "reasoning", "route"}
    assert {e["name"] for e in catalog["loras"]} == {"math", "code", "reasoning"}
    assert [p["name"] for p in catalog["profiles"]] == ["math-hard"]
    assert catalog["t2l"] is True and catalog["refused"] == {}
    status, _, health = http(url, "/healthz", key=None)
    assert status == 200 and health["status"] == "ok"


# --- what bad input gets (each followed by a good request)
BAD = [
    ("malformed JSON", dict(raw=b'{"model": "tiny", "messages": ['), 400),
    ("schema violation", dict(body={"model": "tiny", "messages": "hi"}), 400),
    ("n > 1", dict(body={"model": "tiny", "n": 2,
                         "messages": [{"role": "user", "content": "hi"}]}), 400),
    ("unknown model", dict(body={"model": "gpt-9", "messages": [{"role": "user",
                                                                   "content": "hi"}]}), 404),
    ("unknown expert", dict(adaptation="expert:physics"), 400),
    ("unknown lora", dict(adaptation="lora:physics"), 400),
    ("unknown profile", dict(adaptation="fewshot:nope"), 400),
    ("unknown adapter", dict(adaptation="adapter:t2l-0000"), 400),
    ("unknown strategy", dict(adaptation="magic"), 400),
    ("mix unknown name", dict(adaptation='mix:{"physics": 1}'), 400),
    ("mix negative", dict(adaptation='mix:{"math": -1}'), 400),
    ("mix NaN", dict(adaptation='mix:{"math": NaN}'), 400),
    ("mix all zero", dict(adaptation='mix:{"math": 0, "code": 0}'), 400),
    ("mix too many", dict(adaptation="mix:" + json.dumps({f"e{i}": 1 for i in range(9)})), 400),
    ("empty description", dict(adaptation="t2l:   "), 400),
    ("long description", dict(adaptation="t2l:" + "x" * 2001), 400),
    ("prompt too long", dict(question="9" * 600), 400),
    ("max_tokens over cap", dict(max_tokens=65), 400),
    ("body too large", dict(question="9" * 30_000), 413),
    ("no key", dict(key=None), 401),
    ("wrong key", dict(key="nope"), 401),
]


@pytest.mark.parametrize("case,spec,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(url, case, spec, status):
    spec = dict(spec)
    key = spec.pop("key", KEY)
    if "raw" in spec or "body" in spec:
        got, _, body = http(url, "/v1/chat/completions", spec.get("body"), key=key,
                            raw=spec.get("raw"))
    else:
        body = {"model": "tiny", "temperature": 0,
                "messages": [{"role": "user", "content": spec.get("question", "hi")}],
                "max_tokens": spec.get("max_tokens", 8)}
        if "adaptation" in spec:
            body["adaptation"] = spec["adaptation"]
        got, _, body = http(url, "/v1/chat/completions", body, key=key)
    assert got == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if case.startswith("unknown") and "strategy" not in case and "model" not in case:
        assert "available" in error["message"] or "held" in error["message"]
    ok, _, answer = chat(url, "none", max_tokens=4)
    assert ok == 200 and answer["choices"][0]["message"]["content"] is not None


def test_bad_description_on_the_adapters_endpoint(url):
    status, _, body = http(url, "/v1/adapters", {"description": ""})
    assert status == 400 and body["error"]["param"] == "description"


# --- metrics (runs last in this module: it reads what the tests above caused)
def test_metrics_are_exported_to_prometheus(server):
    port = server[1]
    deadline, text = time.time() + 60, ""
    wanted = ["ray_t2ray_requests", "ray_t2ray_errors", "ray_t2ray_request_seconds",
              "ray_t2ray_first_pass_seconds", "ray_t2ray_adapter_cache"]
    # each tagged series reaches the export in its own report: wait for all of them
    series = ['strategy="expert"', 'expert="math"', 'status="401"', 'result="hit"',
              'result="miss"']
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        if all(w in text for w in wanted + series):
            break
        time.sleep(2)
    for w in wanted + series:
        assert w in text, f"{w} not exported"
