"""Prompts as the engines receive them: one user turn with an optional system turn, templated
with the model's own chat template. Everything that builds a prompt imports this, never an engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One chat turn to answer; a bare `str` given to an engine means `Prompt(user=str)`."""

    user: str
    system: str | None = None


def as_prompt(prompt: str | Prompt) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt(prompt)


def format_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The model's own prompt template around one user turn, ready for the assistant's answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str | Prompt) -> list[int]:
    """Token ids of a templated prompt (the template already holds any special tokens)."""
    p = as_prompt(prompt)
    return tokenizer(format_prompt(tokenizer, p.user, p.system),
                     add_special_tokens=False)["input_ids"]
