"""The HTTP face of the graph: OpenAI's endpoints plus t2ray's own, limits, the optional API key,
errors in OpenAI's body, and what answered each request (a `t2ray` object and a header)."""

from __future__ import annotations

import hmac
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from t2ray.adapt.router import BASE
from t2ray.models import load_tokenizer
from t2ray.models.prompt import prompt_ids
from t2ray.serve.adaptation import ROUTED, Adaptation, AdaptationError, parse_adaptation
from t2ray.serve.config import ServeArgs
from t2ray.serve.deployments import GenJob
from t2ray.serve.library import CLASSIFIER, ServingLibrary
from t2ray.serve.metrics import IngressMetrics
from t2ray.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    json_object,
    new_id,
    parse_request,
    response_body,
    stream_events,
)
from t2ray.t2l.encoder import check_description

log = logging.getLogger("ray.serve")
API_KEY_ENV = "T2RAY_API_KEY"
EXPERT_HEADER = "x-t2ray-expert"

# The helpers come before the ingress class: `serve.ingress` serializes the app's routes when
# the class is defined, so module globals defined after it would be missing in the replicas.
def _expert_label(a: Adaptation) -> str:
    """What answered, for the header and the metrics: base, an expert name, or the adaptation."""
    if a.strategy == "none":
        return "base"
    if a.strategy == "expert":
        return a.name
    return str(a)


def _mixture(a: Adaptation, library: ServingLibrary) -> dict:
    if a.strategy == "mix":
        return dict(a.weights)
    profile = library.profiles[a.name]
    if len(profile.alpha) != len(profile.experts):
        return {"per_matrix": True, "experts": list(profile.experts)}
    return {n: round(w, 4) for n, w in zip(profile.experts, profile.alpha)}


def _pieces(tokenizer, ids: list[int], text: str) -> list[str]:
    """The completion cut into one piece per token, the pieces joining to exactly `text`
    (decoded prefixes, so multi-token characters stay whole)."""
    pieces, done = [], ""
    for n in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:n], skip_special_tokens=True)[: len(text)]
        if prefix.startswith(done) and len(prefix) > len(done):
            pieces.append(prefix[len(done):])
            done = prefix
    if text.startswith(done) and done != text:
        pieces.append(text[len(done):])
    return pieces if "".join(pieces) == text else [text]  # ids that do not decode to the text


api = FastAPI(title="t2ray", description="Self-adaptive LLM serving: Transformer² experts and "
              "Text-to-LoRA adapters behind an OpenAI-compatible API.")


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, router, llm, t2l, args: dict, fingerprint: str, library: str,
                 max_positions: int):
        self.router, self.llm, self.t2l = router, llm, t2l
        self.args = ServeArgs.from_args(args)
        self.limits = self.args.limits
        self.prompt_limit = min(self.limits.max_prompt_tokens or max_positions, max_positions)
        self.max_positions = max_positions
        self.tokenizer = load_tokenizer(self.args.model)
        self.library = ServingLibrary.open(library, fingerprint)
        self.fingerprint = fingerprint
        self.api_key = os.environ.get(API_KEY_ENV) or None
        self.metrics = IngressMetrics()

    # --- endpoints
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.args.name, "base_fingerprint": self.fingerprint}

    @api.get("/v1/models")
    async def models(self, request: Request):
        return await self._answer(request, lambda _: {"object": "list", "data": [{
            "id": self.args.name, "object": "model", "created": 0, "owned_by": "t2ray",
            "base_fingerprint": self.fingerprint}]}, read_body=False)

    @api.get("/v1/experts")
    async def experts(self, request: Request):
        return await self._answer(request, lambda _: self.library.catalog(), read_body=False)

    @api.post("/v1/adapters")
    async def adapters(self, request: Request):
        async def make(raw: bytes) -> dict:
            body = json_object(raw)
            description = self._description(body.get("description"), param="description")
            made = await self.t2l_handle().adapter_for.remote(description)
            return {"object": "adapter", "description": description, **made}

        return await self._answer(request, make)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._answer(request, lambda raw: self._complete(raw, chat=True))

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._answer(request, lambda raw: self._complete(raw, chat=False))

    # --- the two passes
    async def _complete(self, raw: bytes, chat: bool):
        t0 = time.perf_counter()
        req = parse_request(ChatCompletionRequest if chat else CompletionRequest, raw)
        if req.model != self.args.name:
            raise APIError(404, f"model {req.model!r} is not served here; this server serves "
                                f"{self.args.name!r}", param="model", code="model_not_found")
        try:
            prompt = req.to_prompt()
        except ValueError as e:
            raise APIError(400, str(e), param="messages" if chat else "prompt") from None
        max_tokens = req.token_limit or self.limits.max_tokens
        prompt_tokens = len(prompt_ids(self.tokenizer, prompt))
        self._check_lengths(prompt_tokens, max_tokens)
        try:
            asked = parse_adaptation(req.adaptation, self.args.default_adaptation,
                                     self.limits.max_mix_entries)
        except AdaptationError as e:
            raise APIError(400, str(e), param="adaptation") from None
        info: dict = {"strategy": asked.strategy}
        answer_with = await self._resolve(asked, prompt, info)
        t1 = time.perf_counter()
        job = GenJob(prompt, max_tokens, req.temperature, req.top_p, req.seed, tuple(req.stops),
                     answer_with)
        if answer_with.strategy in ("mix", "lora", "adapter"):
            result = await self.llm.generate_rows.remote(job)
        else:  # one weight set for many requests: multiplexed by its id, run recomposed
            handle = self.llm if answer_with.strategy == "none" else self.llm.options(
                multiplexed_model_id=str(answer_with))
            result = await handle.generate_hot.remote(job)
        if "error" in result:
            raise APIError(result["status"], result["error"], param="adaptation")
        total = time.perf_counter() - t0
        info.update(adaptation=str(answer_with), batch_size=result["batch_size"],
                    first_pass_s=round(t1 - t0, 4) if asked.strategy in ROUTED else 0.0,
                    total_s=round(total, 4))
        expert = _expert_label(answer_with)
        info.setdefault("expert", expert)
        self.metrics.requests.inc(tags={"strategy": asked.strategy, "expert": expert})
        self.metrics.total.observe(total, tags={"strategy": asked.strategy})
        rid = new_id("chatcmpl" if chat else "cmpl")
        headers = {EXPERT_HEADER: expert}
        if req.stream:
            pieces = _pieces(self.tokenizer, result["token_ids"], result["text"])
            return StreamingResponse(
                stream_events(chat, rid, self.args.name, pieces, result["finish_reason"],
                              prompt_tokens, info),
                media_type="text/event-stream", headers=headers)
        body = response_body(chat, rid, self.args.name, result["text"], result["finish_reason"],
                             prompt_tokens, len(result["token_ids"]), info)
        return JSONResponse(body, headers=headers)

    async def _resolve(self, asked: Adaptation, prompt, info: dict) -> Adaptation:
        """What answers: pass 1 for routed strategies, the adapter id for t2l:, and every name
        checked against the library (a 400 naming the valid ones)."""
        try:
            if asked.strategy in ROUTED:
                if asked.strategy == "classifier" and CLASSIFIER not in self.library.experts:
                    raise AdaptationError(f"the library has no classifier expert "
                                          f"({CLASSIFIER!r}); use 'prompt'")
                t = time.perf_counter()
                routed = await self.router.route.remote((asked.strategy, prompt.user))
                self.metrics.first_pass.observe(time.perf_counter() - t,
                                                tags={"strategy": asked.strategy})
                info.update(category=routed["category"], router_scores=routed["scores"],
                            router_confidence=routed["confidence"],
                            router_threshold=routed["threshold"])
                category = routed["category"]
                if category == BASE or category not in self.library.experts:
                    return Adaptation("none")
                return Adaptation("expert", name=category)
            if asked.strategy == "t2l":
                made = await self.t2l_handle().adapter_for.remote(
                    self._description(asked.description))
                info.update(adapter_id=made["id"], cache_hit=made["cached"])
                return Adaptation("adapter", name=made["id"])
            if asked.strategy == "adapter":
                held = await self.t2l_handle().held.remote()
                if asked.name not in held:
                    raise AdaptationError(f"unknown adapter id {asked.name!r}; adapters held "
                                          f"now: {', '.join(held[-20:]) or 'none'} (make one "
                                          "with POST /v1/adapters or t2l:<description>)")
                return asked
            self.library.check(asked)  # refuses unknown names, naming the valid ones
            if asked.strategy in ("mix", "fewshot"):
                info["mixture"] = _mixture(asked, self.library)
            return asked
        except AdaptationError as e:
            raise APIError(400, str(e), param="adaptation") from None

    # --- checks
    def t2l_handle(self):
        if self.t2l is None:
            raise APIError(400, "this server has no T2L checkpoint in its library; t2l: and "
                                "adapter: are not available", param="adaptation")
        return self.t2l

    def _description(self, text, param: str = "adaptation") -> str:
        try:
            text = check_description(text)
        except ValueError as e:
            raise APIError(400, str(e), param=param) from None
        if len(text) > self.limits.max_description_chars:
            raise APIError(400, f"a task description must be at most "
                                f"{self.limits.max_description_chars} characters "
                                f"(got {len(text)})", param=param)
        return text

    def _check_lengths(self, prompt_tokens: int, max_tokens: int) -> None:
        if max_tokens > self.limits.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's cap of "
                                f"{self.limits.max_tokens}", param="max_tokens")
        if prompt_tokens > self.prompt_limit:
            raise APIError(400, f"the prompt is {prompt_tokens} tokens; at most "
                                f"{self.prompt_limit} are served", param="messages",
                           code="context_length_exceeded")
        if prompt_tokens + max_tokens > self.max_positions:
            raise APIError(400, f"prompt ({prompt_tokens}) + max_tokens ({max_tokens}) tokens "
                                f"exceed the model's {self.max_positions} positions",
                           param="max_tokens", code="context_length_exceeded")

    def _authorised(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the body is {declared} bytes; at most {limit} are accepted")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"the body is over {limit} bytes")
        return raw

    async def _answer(self, request: Request, handler, read_body: bool = True):
        """Authorise, read the body within its limit, run `handler`, and turn every refusal into
        OpenAI's error body (the server keeps serving)."""
        try:
            self._authorised(request)
            raw = await self._read_body(request) if read_body else b""
            result = handler(raw)
            if hasattr(result, "__await__"):
                result = await result
            return result if not isinstance(result, dict) else JSONResponse(result)
        except APIError as e:
            self.metrics.errors.inc(tags={"status": str(e.status)})
            return JSONResponse(e.body(), status_code=e.status)
        except Exception as e:  # a bug or a dead replica: answered, logged, and counted
            log.exception("request failed")
            self.metrics.errors.inc(tags={"status": "500"})
            return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body(),
                                status_code=500)
