"""Request and response bodies of the OpenAI-compatible API (pydantic), as vLLM's
``protocol.py`` has them.

**Requests.** Field names and defaults follow OpenAI's API reference (``/v1/completions``,
``/v1/chat/completions``) so that its official client, lm-evaluation-harness and other
tools work unchanged.  Unknown fields are ignored, as OpenAI-compatible servers
(vLLM, llama.cpp's server) do, because clients send vendor extras freely.  Two
extras of our own: ``unite`` (ask for per-step union sizes and member probabilities)
and ``ignore_eos`` (vLLM's name, for benchmarks that need a fixed length).  Type and range
problems are pydantic's job and come back as 422; settings that are valid JSON but that this
server cannot honour (``n > 1``, ``suffix``, ``echo`` with a stream) are checked in
:mod:`.serving` and come back as 400 naming the parameter.

**Responses.** :mod:`.serving` fills these models and the routes send ``model.model_dump()``.
Field names, order and nulls follow OpenAI's API reference, so the official client and
lm-evaluation-harness parse them unchanged: a field that OpenAI sends as ``null``
(``logprobs``, ``finish_reason``) is always sent, and the few that OpenAI leaves out when
they do not apply (a chunk's ``usage``, a delta's ``role``, our ``unite`` extra) are listed
in :attr:`OpenAIBaseModel.omit_when_none` and dropped when None.

Our one extra is ``unite``: the members, their weights and every step record
(:meth:`unite_llm.engine.StepRecord.to_dict`, with ``end`` flagging the END step), sent
only when the request asked for it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

# -- requests --------------------------------------------------------------------------


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


# -- responses -------------------------------------------------------------------------


class FinishReason(StrEnum):
    """Why a choice ended."""

    STOP = "stop"
    """END was chosen or a stop string was reached."""
    LENGTH = "length"
    """``max_tokens`` was reached, or a member's context is full."""


class OpenAIBaseModel(BaseModel):
    """A response body: enums dump as their values, and the fields named in
    :attr:`omit_when_none` are left out of the dump when they are None."""

    model_config = ConfigDict(use_enum_values=True)

    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omit_when_none:
            if key in data and data[key] is None:
                del data[key]
        return data


# -- shared ----------------------------------------------------------------------------


class Usage(OpenAIBaseModel):
    prompt_tokens: int
    """The longest of the members' prompt tokenizations (each member counts its own tokens)."""
    completion_tokens: int
    """Ensemble steps that appended text (one united piece each; the END step is not one)."""
    total_tokens: int


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "unite-llm"
    members: list[str]


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(OpenAIBaseModel):
    error: ErrorDetail


# -- the ``unite`` extra ---------------------------------------------------------------


class UniteChoice(OpenAIBaseModel):
    """One choice's generation record."""

    index: int
    prompt_tokens: dict[str, int]
    """Each member's prompt length in its own tokens."""
    steps: list[dict[str, Any]]
    """:meth:`~unite_llm.engine.StepRecord.to_dict` of every step, the END step included (``end: true``)."""
    timing: dict[str, Any]


class UniteBlock(OpenAIBaseModel):
    """``unite`` of a plain (non-streamed) response."""

    members: list[str]
    weights: list[float]
    choices: list[UniteChoice]


class StreamUnite(OpenAIBaseModel):
    """``unite`` of a stream chunk: the steps behind the chunk's text; the last chunk adds the rest."""

    omit_when_none = ("members", "prompt_tokens", "timing")

    steps: list[dict[str, Any]]
    members: list[str] | None = None
    prompt_tokens: dict[str, int] | None = None
    timing: dict[str, Any] | None = None


# -- completions -----------------------------------------------------------------------


class CompletionLogprobs(OpenAIBaseModel):
    """OpenAI's legacy completions ``logprobs`` object (ensemble probabilities)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    """None for an echoed prompt's first token (nothing precedes it)."""
    top_logprobs: list[dict[str, float]] | None
    """None when the request asked for ``logprobs=0``."""
    text_offset: list[int]


class CompletionResponseChoice(OpenAIBaseModel):
    """A choice of a completion, and of a completion stream chunk (the same shape)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(OpenAIBaseModel):
    omit_when_none = ("unite",)

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    usage: Usage
    unite: UniteBlock | None = None


class CompletionStreamResponse(OpenAIBaseModel):
    """One server-sent event of a completion stream (the usage chunk has no choices)."""

    omit_when_none = ("unite", "usage")

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    unite: StreamUnite | None = None
    usage: Usage | None = None


# -- chat completions ------------------------------------------------------------------


class ChatTopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatLogprobToken(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(OpenAIBaseModel):
    content: list[ChatLogprobToken]


class ChatMessageOut(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    omit_when_none = ("unite",)

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: Usage
    unite: UniteBlock | None = None


class DeltaMessage(OpenAIBaseModel):
    """The new part of the message: ``role`` on the first chunk only, no ``content`` on a final chunk without text."""

    omit_when_none = ("role", "content")

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    """One server-sent event of a chat stream (the usage chunk has no choices)."""

    omit_when_none = ("unite", "usage")

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    unite: StreamUnite | None = None
    usage: Usage | None = None


class TokenizeResponse(OpenAIBaseModel):
    """``POST /tokenize``: the reference member's tokens (vLLM's shape)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
