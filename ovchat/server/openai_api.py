"""OpenAI's API shapes: request bodies in, replies, stream chunks and errors out.

Requests are validated with pydantic (what FastAPI speaks); anything a client gets wrong becomes
an :class:`ApiError` with OpenAI's error object, never a 500. Unknown fields are ignored, as
OpenAI-compatible servers (vLLM, llama.cpp's) do, so clients that send extras keep working. Known
fields take JSON's own types only, as OpenAI's API does: ``"temperature": "0.5"`` or ``true`` is a
400, not a number guessed from it.

Log-probabilities come in two shapes: the chat's (``logprobs.content``, a list of tokens with their
``top_logprobs``) and the legacy completions' (parallel lists ``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``). Both are built here from the engine's :class:`TokenLogprob`.
"""

from __future__ import annotations

import codecs
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from ovchat.engine import ReplyStats
from ovchat.engine.streaming import TokenLogprob
from ovchat.errors import OvchatError
from ovchat.prompt import Message
from ovchat.server import DEFAULT_MAX_MESSAGES, MAX_STOP_STRINGS
from ovchat.settings import MAX_LOGPROBS, GenerationSettings

# pydantic's lax mode would read true as 1 and "0.5" as 0.5; a client that sends them has a bug to hear about.
Number = Annotated[float, Strict()]  # an integer is a number too
Integer = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]

# When a request leaves a parameter out, OpenAI's defaults apply (temperature 1, top_p 1),
# not the page's: a client written for the OpenAI API expects them.
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
# ovchat's finish reasons as OpenAI names them; "cancelled" replies are never sent (the client left).
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}
# The legacy /v1/completions' limit on ``logprobs`` (the chat's top_logprobs goes to MAX_LOGPROBS).
MAX_LEGACY_LOGPROBS = 5
# JSON has no -Infinity: a token the model rules out gets OpenAI's (and vLLM's) stand-in.
LOWEST_LOGPROB = -9999.0


class ApiError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_error(errors: Sequence[Any]) -> ApiError:
    """A body FastAPI could not read as the request's model: bad JSON, a missing or ill-typed field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON: {detail}".rstrip(": "))
    where = _field_path(first.get("loc", ()))
    if not where:  # the body itself: a JSON array, string or null, or nothing at all
        what = "empty" if first.get("type") == "missing" else _json_type(first.get("input"))
        return ApiError(400, f"the request body must be a JSON object, not {what}")
    return ApiError(400, f"{where}: {first.get('msg')}", param=where)


# The names pydantic gives a union's members in an error's location.
_UNION_MEMBERS = {"str", "int", "float", "bool", "none", "function-after", "function-before"}


def _field_path(loc: Sequence[Any]) -> str:
    """pydantic's location as OpenAI names a field (``messages[0].content``), without the union member a value
    was tried as (pydantic's ``str`` or ``list[TextPart]``)."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_MEMBERS and "[" not in str(part):
            path += f".{part}" if path else str(part)
    return path


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a boolean" if isinstance(value, bool) else "a number"


def check_text(text: str, where: str, param: str | None) -> str:
    """``text`` if it can be sent to the model; JSON can carry a lone surrogate (``"\\ud800"``), which no
    tokenizer takes, so it is the client's mistake (a 400), not the server's."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"{where} is not valid Unicode: a lone surrogate at character {error.start}",
                       param=param) from None  # fmt: skip
    return text


class TextPart(BaseModel):
    type: Text
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Text
    content: Text | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: Flag = False


class SamplingBody(BaseModel):
    """The parameters chat and plain completions share."""

    model_config = ConfigDict(extra="ignore")
    model: Text
    max_tokens: Integer | None = None
    max_completion_tokens: Integer | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Integer | None = None
    repetition_penalty: Number | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None
    seed: Integer | None = None
    stop: Text | list[Text] | None = None
    n: Integer = 1
    stream: Flag = False
    stream_options: StreamOptions | None = None

    def settings(self) -> GenerationSettings:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported: one reply per request", param="n")
        values: dict[str, Any] = {**OPENAI_DEFAULTS}
        given = {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty, "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty, "seed": self.seed,
            "max_new_tokens": self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens,
        }  # fmt: skip
        values.update({name: value for name, value in given.items() if value is not None})
        if self.stop:
            stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
            if len(stops) > MAX_STOP_STRINGS:
                raise ApiError(400, f"stop takes at most {MAX_STOP_STRINGS} strings, not {len(stops)}", param="stop")
            values["stop"] = tuple(check_text(stop, "a stop string", "stop") for stop in stops)
        values["logprobs"] = self.requested_logprobs()
        try:
            return GenerationSettings(**values)
        except OvchatError as error:
            # The settings' messages start with the setting's name; the client knows it by OpenAI's.
            name, rest = str(error).split(" ", 1)
            api_name = self._max_tokens_name if name == "max_new_tokens" else name
            raise ApiError(400, f"{api_name} {rest}", param=api_name) from None

    def requested_logprobs(self) -> int | None:
        """``GenerationSettings.logprobs``: None (off), or how many alternatives each token comes with."""
        return None

    @property
    def _max_tokens_name(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatBody(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: Flag = False
    top_logprobs: Integer | None = None

    def requested_logprobs(self) -> int | None:
        top = self.top_logprobs
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], not {top}",
                           param="top_logprobs")  # fmt: skip
        if top is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
        return (top or 0) if self.logprobs else None

    def chat(self, max_messages: int = DEFAULT_MAX_MESSAGES) -> list[Message]:
        """The messages as the engine takes them: text content, OpenAI's "developer" role as system; at most
        ``max_messages`` of them."""
        if len(self.messages) > max_messages:
            raise ApiError(400, f"the chat has {len(self.messages)} messages, over this server's limit of "
                           f"{max_messages}; send the latest ones (older turns would not fit the model's context)",
                           param="messages")  # fmt: skip
        chat: list[Message] = []
        for index, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            if role not in ("system", "user", "assistant"):
                raise ApiError(400, f"message {index} has role {message.role!r}; this server takes "
                               "system, developer, user and assistant", param=f"messages[{index}].role")  # fmt: skip
            text = check_text(_text(message.content, index), f"message {index}", f"messages[{index}].content")
            chat.append({"role": role, "content": text})  # type: ignore[typeddict-item]
        return chat


class CompletionBody(SamplingBody):
    prompt: Text
    logprobs: Integer | None = None  # the legacy API's: how many alternatives, not a switch

    @property
    def text(self) -> str:
        """The prompt, if the model can read it."""
        return check_text(self.prompt, "the prompt", "prompt")

    def requested_logprobs(self) -> int | None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LEGACY_LOGPROBS:
            raise ApiError(400, f"logprobs must be an integer in [0, {MAX_LEGACY_LOGPROBS}], not {self.logprobs}",
                           param="logprobs")  # fmt: skip
        return self.logprobs


def _text(content: str | list[TextPart] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"message {index} has a {part.type!r} part; this server reads text only",
                           param=f"messages[{index}].content")  # fmt: skip
        parts.append(part.text)
    return "".join(parts)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(stats: ReplyStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
    }


def chat_reply(
    reply_id: str, model: str, text: str, stats: ReplyStats, logprobs: Sequence[TokenLogprob] | None = None
) -> dict[str, Any]:
    return {
        "id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": FINISH_REASONS[stats.finish_reason], "logprobs": chat_logprobs(logprobs)}],
        "usage": usage(stats),
    }  # fmt: skip


def chat_chunk(
    reply_id: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    return {
        "id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": chat_logprobs(logprobs)}],
    }  # fmt: skip


def completion_reply(
    reply_id: str,
    model: str,
    text: str,
    stats: ReplyStats | None,
    streamed: bool,
    logprobs: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    finish = FINISH_REASONS[stats.finish_reason] if stats is not None else None
    body: dict[str, Any] = {
        "id": reply_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": legacy_logprobs(logprobs)}],
    }  # fmt: skip
    if stats is not None and not streamed:
        body["usage"] = usage(stats)
    return body


def chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: None when they were not asked for, else ``{"content": [...], "refusal":
    None}`` with one entry per reply token, its ``top_logprobs`` likeliest first."""
    if tokens is None:
        return None

    def entry(token: TokenLogprob) -> dict[str, Any]:
        return {"token": token.text, "logprob": _json_logprob(token.logprob), "bytes": list(token.token_bytes)}

    content = [{**entry(token), "top_logprobs": [entry(alternative) for alternative in token.top]} for token in tokens]
    return {"content": content, "refusal": None}


def legacy_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A completion choice's ``logprobs`` in the legacy shape: parallel lists ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (a dict per token: its alternatives and, as OpenAI always adds it, the chosen token, so up
    to N + 1 entries) and ``text_offset``, each token's character offset in the reply's text (from 0, as vLLM
    counts; the tokens of a character split across tokens share its offset)."""
    if tokens is None:
        return None
    offsets: list[int] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")  # the reply's text drops broken bytes too
    offset = 0
    for token in tokens:
        offsets.append(offset)
        offset += len(decoder.decode(token.token_bytes))
    tops: list[dict[str, float]] = []
    for token in tokens:
        top: dict[str, float] = {}
        for alternative in (*token.top, token):  # likeliest first; two tokens of one text keep the likelier
            top.setdefault(alternative.text, _json_logprob(alternative.logprob))
        tops.append(top)
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [_json_logprob(token.logprob) for token in tokens],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _json_logprob(logprob: float) -> float:
    return max(float(logprob), LOWEST_LOGPROB)


def usage_chunk(reply_id: str, model: str, stats: ReplyStats, kind: Literal["chat", "text"]) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    kind_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": reply_id, "object": kind_name, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(stats)}  # fmt: skip
