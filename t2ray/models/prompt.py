"""Prompts as the engines receive them: one user turn with an optional system turn, templated
with the model's own chat template. Everything that builds a prompt imports this, never an engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One chat turn to answer; a bare `str` given to an engine means `Prompt(user=str)`."""

    user: str
    system: str | None = None
    # The start of the assistant's answer, written for the model (a forced format such as a
    # worked solution's first characters); completions hold what follows it.
    prefill: str = ""


def as_prompt(prompt: str | Prompt) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt(prompt)


def format_prompt(tokenizer, user: str, system: str | None = None, prefill: str = "") -> str:
    """The model's own prompt template around one user turn, ready for the assistant's answer
    (which starts with `prefill`)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=True) + prefill


def templated(tokenizer, prompt: str | Prompt) -> str:
    p = as_prompt(prompt)
    return format_prompt(tokenizer, p.user, p.system, p.prefill)


def prompt_ids(tokenizer, prompt: str | Prompt) -> list[int]:
    """Token ids of a templated prompt (the template already holds any special tokens)."""
    return tokenizer(templated(tokenizer, prompt), add_special_tokens=False)["input_ids"]
