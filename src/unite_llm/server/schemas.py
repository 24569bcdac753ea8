"""Request bodies of the OpenAI-compatible API (pydantic); the responses are in :mod:`.protocol`.

Field names and defaults follow OpenAI's API reference (``/v1/completions``,
``/v1/chat/completions``) so that its official client, lm-evaluation-harness and other
tools work unchanged.  Unknown fields are ignored, as OpenAI-compatible servers
(vLLM, llama.cpp's server) do, because clients send vendor extras freely.  Two
extras of our own: ``unite`` (ask for per-step union sizes and member probabilities)
and ``ignore_eos`` (vLLM's name, for benchmarks that need a fixed length).

Type and range problems are pydantic's job and come back as 422; settings that are
valid JSON but that this server cannot honour (``n > 1``, ``suffix``, ``echo`` with a stream)
are checked in :mod:`.serving` and come back as 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class UniteOptions(BaseModel):
    """The ``unite`` extra: what to explain about each step."""

    model_config = ConfigDict(extra="forbid")

    explain: bool = False
    """Per step: the chosen piece, its ensemble probability, union size, each member's probability."""
    union: bool = False
    """Also every candidate of the union with each member's probability (implies ``explain``)."""

    @property
    def wanted(self) -> bool:
        return self.explain or self.union


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Settings shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, strict=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False
    unite: UniteOptions | None = None
    # Read only to be refused (serving.check_common): silently ignoring a JSON schema or a
    # tool list would return text the client did not ask for.
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    # strict: ``true`` is not a budget of 1, nor ``"2"`` of 2 (OpenAI refuses both).
    max_tokens: int | None = Field(16, ge=0, strict=True)
    logprobs: int | None = Field(None, ge=0, le=20, strict=True)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, strict=True)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0, strict=True)
    max_completion_tokens: int | None = Field(None, ge=0, strict=True)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True)


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (vLLM's route; lm-eval's ``tokenizer_backend=remote`` uses it)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    """Add the reference member's BOS, as its tokenizer does for a new text (if it has one)."""


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]
