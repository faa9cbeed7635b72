"""The OpenAI wire format the ingress speaks: request models, response bodies, SSE chunks and
error bodies (`{"error": {"message", "type", "param", "code"}}`).

Our own small pydantic models rather than vLLM's protocol classes: the CPU default runs without
vLLM, and importing vLLM's protocol costs about 10 s per ingress replica. They keep unknown fields
(`extra="allow"`) as OpenAI's and vLLM's servers do, so clients may send what they like; what
changes the answer and is not supported (n > 1, logprobs, echo) is refused, never ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from t2ray.models.prompt import Prompt


class APIError(Exception):
    """An error answered with OpenAI's body and `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | int | None = None
    adaptation: str | None = None  # t2ray: which second pass answers (serve/adaptation.py)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n = 1 is served")
        return n

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not served")
        return v

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = [p.get("text") for p in self.content if p.get("type") == "text"]
        if len(parts) != len(self.content):
            raise ValueError("only text content parts are served")
        return "".join(parts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def to_prompt(self) -> Prompt:
        """The one user turn (with an optional system turn) the engines take."""
        system = [m for m in self.messages if m.role in ("system", "developer")]
        rest = [m for m in self.messages if m.role not in ("system", "developer")]
        if len(system) > 1 or len(rest) != 1 or rest[0].role != "user":
            raise ValueError("messages must be one user message, optionally after one system "
                             "message (multi-turn conversations are not served)")
        return Prompt(rest[0].text(), system[0].text() if system else None)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not served")
        return v

    def to_prompt(self) -> Prompt:
        """The prompt as the user turn of the model's chat template (the bundled and the
        supported models are chat models; raw-text continuation is not served)."""
        texts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(texts) != 1:
            raise ValueError("exactly one prompt per request is served")
        return Prompt(texts[0])

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


def json_object(raw: bytes) -> dict:
    """A body's JSON object, or a 400 (never FastAPI's 422)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    return data


def parse_request(cls: type[_Request], raw: bytes) -> _Request:
    """A request model from a body, or a 400 naming the first bad field."""
    data = json_object(raw)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"],
                       param=param, code="invalid_value") from None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def response_body(chat: bool, rid: str, model: str, text: str, finish: str,
                  prompt_tokens: int, completion_tokens: int, t2ray: dict) -> dict:
    choice = ({"index": 0, "message": {"role": "assistant", "content": text},
               "finish_reason": finish, "logprobs": None} if chat else
              {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": _usage(prompt_tokens, completion_tokens), "t2ray": t2ray}


def stream_events(chat: bool, rid: str, model: str, pieces: list[str], finish: str,
                  prompt_tokens: int, t2ray: dict):
    """Server-sent events of one completion: a chunk per token piece, the finish chunk (with
    usage and the t2ray object), then `data: [DONE]`."""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta_text: str | None, finish_reason: str | None, first: bool = False,
              extra: dict | None = None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else {}
            if delta_text is not None:
                delta["content"] = delta_text
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish_reason,
                      "logprobs": None}
        body = {"id": rid, "object": kind, "created": created, "model": model,
                "choices": [choice], **(extra or {})}
        return f"data: {json.dumps(body)}\n\n"

    if chat:
        yield event(None, None, first=True)
    for piece in pieces:
        yield event(piece, None)
    yield event(None if chat else "", finish,
                extra={"usage": _usage(prompt_tokens, len(pieces)), "t2ray": t2ray})
    yield "data: [DONE]\n\n"
