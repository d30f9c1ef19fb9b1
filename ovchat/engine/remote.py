"""Any OpenAI-compatible server behind the engine's API: ``RemoteEngine.stream`` as ``Engine.stream``.

The page, ``ovchat chat`` and ``ovchat ask`` chat with a server a team already runs (``ovchat serve``,
llama.cpp's server, vLLM, text-generation-inference, Ollama, OpenVINO Model Server, a hosted API)
through the official ``openai`` client, streaming. Both engines satisfy
:class:`~ovchat.engine.engine.StreamingEngine`, the one protocol the front ends use.

What is not the same as a local model, and what is done about it:

- The settings are mapped to OpenAI's fields (temperature, top_p, max_tokens, stop, seed, the
  penalties, logprobs); top_k and repetition_penalty go as extra fields, which vLLM, llama.cpp's server
  and ``ovchat serve`` take. A server that refuses them (OpenAI's own answers 400 to unknown fields)
  is asked again without them, and :attr:`RemoteEngine.ignored` names them, so the page can say so.
- The history is trimmed as for a local model (``prompt.fit_to_context``), with the tokens estimated
  from the text (a token per 3 UTF-8 bytes: generous for English, about right for Chinese), since a
  remote server's tokenizer is not at hand. The context length is the server's where its model list
  says it (vLLM's ``max_model_len``, llama.cpp's ``meta.n_ctx_train``, ``ovchat serve``'s), else a setting.
- Errors: an unreachable server, a refused key (401), an unknown model (404), a rate limit (429) and a
  server error (5xx) each give one line. Only before the first token are they retried, with backoff:
  after it, a retry would repeat text already shown.
- Cancel (or the consumer leaving) closes the HTTP stream, which ends the server's generation too.
- The API key is sent as the bearer token and kept nowhere else: not in saved chats, logs or reprs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovchat.engine.streaming import Chunk, Reply, ReplyStats, TokenLogprob, collect
from ovchat.errors import OvchatError, first_line
from ovchat.prompt import Message, fit_to_context
from ovchat.settings import GenerationSettings

ENDPOINT_ENV = "OVCHAT_ENDPOINT"
API_KEY_ENV = "OVCHAT_API_KEY"
DEFAULT_CONTEXT_LENGTH = 4096  # when the server does not say; --context-length sets another
# The prompt's tokens are guessed from its text, without the server's tokenizer, on the high side: a token per
# 3 bytes of ASCII (English averages about 4), a token per byte of anything else (a byte-level BPE never needs
# more), and room for the template's own text (a default system prompt, role markers, the reply's opening).
ASCII_BYTES_PER_TOKEN = 3
TEMPLATE_TOKENS = 32
MESSAGE_TOKENS = 8
EXTRA_FIELDS = ("top_k", "repetition_penalty")  # sampling settings outside OpenAI's API
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # before the first token only
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # between two chunks of a stream: a long prompt on a busy server is slow to start
# OpenAI's finish reasons as ovchat's; "stop" is the model's own end (a stop string is not told apart).
FINISH_REASONS = {"stop": "eos", "length": "length", "content_filter": "stop", "tool_calls": "eos"}


def estimate_tokens(messages: Sequence[Message]) -> int:
    """A generous guess at a chat's prompt tokens without the server's tokenizer (see ASCII_BYTES_PER_TOKEN)."""
    tokens = TEMPLATE_TOKENS
    for message in messages:
        text = str(message.get("content", ""))
        ascii_bytes = len(text.encode("ascii", "ignore"))
        other_bytes = len(text.encode("utf-8", "surrogatepass")) - ascii_bytes
        tokens += MESSAGE_TOKENS + math.ceil(ascii_bytes / ASCII_BYTES_PER_TOKEN) + other_bytes
    return tokens


def context_length_of(model: Any) -> int | None:
    """The context length a server's model list gives, under the names servers use for it."""
    data = model if isinstance(model, dict) else (getattr(model, "model_extra", None) or {})
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    for value in (
        data.get("max_model_len"),
        data.get("context_length"),
        data.get("context_window"),
        meta.get("n_ctx"),
        meta.get("n_ctx_train"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def describe_error(error: BaseException, url: str, model: str | None) -> str:
    """One line for what went wrong talking to the server."""
    import openai

    detail = first_line(getattr(error, "message", None) or str(error))
    if isinstance(error, openai.APITimeoutError):
        return f"no answer from {url} in time; is the server overloaded?"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach {url}: is the server running, and is the address right? ({detail})"
    if isinstance(error, openai.AuthenticationError):
        return f"{url} refused the API key (401); give the right one with --api-key or {API_KEY_ENV}"
    if isinstance(error, openai.PermissionDeniedError):
        return f"{url} does not allow this key to use {model!r} (403)"
    if isinstance(error, openai.NotFoundError):
        return f"{url} has no model {model!r}, or is not an OpenAI-compatible address (404): {detail}"
    if isinstance(error, openai.RateLimitError):
        return f"{url} is limiting requests (429); wait a moment and try again"
    if isinstance(error, openai.InternalServerError):
        return f"{url} failed ({getattr(error, 'status_code', '5xx')}): {detail}"
    if isinstance(error, openai.APIStatusError):
        return f"{url} refused the request ({error.status_code}): {detail}"
    return f"talking to {url} failed: {detail}"


def _retryable(error: BaseException) -> bool:
    import openai

    return isinstance(error, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError))


def _unknown_extra_field(error: BaseException) -> bool:
    """A 400 or 422 that names one of the extra fields: the server does not take them."""
    import openai

    if not isinstance(error, (openai.BadRequestError, openai.UnprocessableEntityError)):
        return False
    text = str(error).lower()
    return any(name in text for name in EXTRA_FIELDS)


@dataclass
class RemoteEngine:
    """One model on an OpenAI-compatible server. Several threads may stream at once."""

    url: str
    model: str
    context_length: int
    client: Any = field(repr=False)  # an openai.OpenAI, which holds the key
    models: list[str] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)  # settings this server refused, so no longer sent
    device: str = "remote"

    @property
    def path(self) -> Path:
        """The name the terminal shows (a local engine's model folder)."""
        return Path(self.model)

    @classmethod
    def connect(
        cls,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        context_length: int | None = None,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> RemoteEngine:
        """Reach the server, read its model list and pick the model: ``model`` if given (it must be listed
        when the server lists any), else the only or first listed one."""
        import httpx
        import openai

        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise OvchatError(f"the endpoint must be an http:// or https:// address, not {url!r}")
        client = openai.OpenAI(
            base_url=url,
            # Servers without keys still get a header: the client requires one, and they ignore it.
            api_key=api_key or "none",
            max_retries=0,  # retried here, and only before the first token
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        try:
            listed = _with_retries(lambda: list(client.models.list()))
        except Exception as error:
            raise OvchatError(describe_error(error, url, model)) from None
        names = [str(entry.id) for entry in listed]
        if model is None:
            if not names:
                raise OvchatError(f"{url} lists no models; name one with --api-model")
            model = names[0]
        elif names and model not in names:
            raise OvchatError(f"{url} has no model {model!r}; it lists {', '.join(names)}")
        found = next((entry for entry in listed if str(entry.id) == model), None)
        length = context_length or (context_length_of(found) if found is not None else None) or DEFAULT_CONTEXT_LENGTH
        return cls(url=url, model=model, context_length=length, client=client, models=names)

    def request(self, messages: list[Message], settings: GenerationSettings) -> dict[str, Any]:
        """The chat request's fields for ``settings``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": 1.0 if settings.greedy else settings.top_p,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.frequency_penalty:
            body["frequency_penalty"] = settings.frequency_penalty
        if settings.presence_penalty:
            body["presence_penalty"] = settings.presence_penalty
        if settings.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = settings.logprobs
        extra = {name: getattr(settings, name) for name in EXTRA_FIELDS if name not in self.ignored}
        if extra:
            body["extra_body"] = extra
        return body

    def _open(self, body: dict[str, Any]) -> Any:
        """The stream, retried before its first token; asked again without the extra fields if refused."""
        try:
            return _with_retries(lambda: self.client.chat.completions.create(**body))
        except Exception as error:
            if "extra_body" in body and _unknown_extra_field(error):
                self.ignored.update(body.pop("extra_body"))
                return self._open(body)
            raise OvchatError(describe_error(error, self.url, self.model)) from None

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream the server's reply as :meth:`ovchat.engine.Engine.stream` does: text chunks, then a final
        chunk with the stats (and the log-probabilities when the settings ask and the server gives them)."""
        settings = settings or GenerationSettings()
        fitted = fit_to_context(
            messages, lambda kept: range(estimate_tokens(kept)), self.context_length, settings.max_new_tokens
        )
        started = time.perf_counter()
        stream = self._open(self.request(fitted.messages, settings))
        first_at: float | None = None
        chunks = 0
        finish: str | None = None
        usage: Any = None
        logprobs: list[TokenLogprob] = []
        try:
            for event in stream:
                if cancel is not None and cancel.is_set():
                    break
                usage = getattr(event, "usage", None) or usage
                for choice in event.choices or ():
                    finish = choice.finish_reason or finish
                    if choice.logprobs is not None and choice.logprobs.content:
                        logprobs.extend(_token_logprob(entry) for entry in choice.logprobs.content)
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        first_at = first_at or time.perf_counter()
                        chunks += 1
                        yield Chunk(text=text)
        except OvchatError:
            raise
        except Exception as error:  # a stream cut in the middle: what came is kept by the caller
            raise OvchatError(describe_error(error, self.url, self.model)) from None
        finally:
            stream.close()  # also on cancel or when the consumer leaves: the server stops generating
        ended = time.perf_counter()
        cancelled = cancel is not None and cancel.is_set()
        new_tokens = int(getattr(usage, "completion_tokens", 0) or chunks)
        reason = "cancelled" if cancelled or finish is None else FINISH_REASONS.get(finish, "eos")
        decoding_s = ended - first_at if first_at is not None else 0.0
        stats = ReplyStats(
            finish_reason=reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            new_tokens=new_tokens,
            ttft_s=first_at - started if first_at is not None else None,
            decode_tok_s=(new_tokens - 1) / decoding_s if new_tokens > 1 and decoding_s > 0 else None,
            trimmed_turns=fitted.trimmed_turns,
        )
        yield Chunk(stats=stats, logprobs=tuple(logprobs) if settings.logprobs is not None else None)

    def generate(
        self, messages: list[Message], settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Reply:
        return collect(self.stream(messages, settings, cancel))


def _token_logprob(entry: Any) -> TokenLogprob:
    def one(item: Any, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        raw = bytes(item.bytes) if getattr(item, "bytes", None) else str(item.token).encode("utf-8")
        return TokenLogprob(-1, str(item.token), raw, float(item.logprob), top)

    return one(entry, tuple(one(other) for other in entry.top_logprobs or ()))


def _with_retries(call: Any) -> Any:
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return call()
        except Exception as error:
            if delay is None or not _retryable(error):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")
