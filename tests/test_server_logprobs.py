"""Log-probabilities over OpenAI's API: the chat's ``logprobs``/``top_logprobs`` and the legacy completions'
``logprobs``, read by the official `openai` client from ``ovchat serve`` on the real default model.

The shapes are checked without a model first: the builders on hand-made tokens, and the app on a scripted
engine (where in a stream the log-probabilities go). The server's tests are greedy with no repetition
penalty, so that each token is the raw distribution's likeliest, as the log-probabilities are the raw ones.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes import FakeEngine
from fastapi.testclient import TestClient
from test_server import GREEDY_BODY, MODEL, QUESTION, serve

from ovchat.engine import Chunk, ReplyStats
from ovchat.engine.streaming import TokenLogprob
from ovchat.prompt import Message
from ovchat.server import openai_api as api
from ovchat.server.app import create_app
from ovchat.server.process import ServerProcess
from ovchat.settings import MAX_LOGPROBS, GenerationSettings

# -- the shapes, on hand-made tokens ---------------------------------------------------------------


def token(text: str | bytes, logprob: float, top: Sequence[TokenLogprob] = (), token_id: int = 0) -> TokenLogprob:
    raw = text if isinstance(text, bytes) else text.encode()
    return TokenLogprob(token_id, raw.decode("utf-8", errors="replace"), raw, logprob, tuple(top))


EMOJI = "😀".encode()  # four bytes, split across two tokens below
TOKENS = (
    token("Hi", -0.1, [token("Hi", -0.1, token_id=1), token("Hello", -2.5, token_id=2)], token_id=1),
    token(EMOJI[:2], -0.7, [token(EMOJI[:2], -0.7, token_id=3), token("!", -1.0, token_id=4)], token_id=3),
    token(EMOJI[2:], -0.2, [token(EMOJI[2:], -0.2, token_id=5), token("?", -3.0, token_id=6)], token_id=5),
    # A sampled token outside the alternatives, and one the model rules out (-inf is not JSON).
    token(" x", -float("inf"), [token(" y", -0.3, token_id=7), token(" z", -1.4, token_id=8)], token_id=9),
)


def test_chat_logprobs_are_none_when_not_asked_for() -> None:
    assert api.chat_logprobs(None) is None
    reply = api.chat_reply("id", MODEL, "Hi", ReplyStats(finish_reason="eos", prompt_tokens=3, new_tokens=2))
    assert reply["choices"][0]["logprobs"] is None
    assert api.chat_chunk("id", MODEL, {"content": "Hi"})["choices"][0]["logprobs"] is None


def test_chat_logprobs_have_openais_shape() -> None:
    shaped = api.chat_logprobs(TOKENS)
    assert shaped is not None and shaped["refusal"] is None
    content = shaped["content"]
    assert content[0] == {
        "token": "Hi", "logprob": -0.1, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                         {"token": "Hello", "logprob": -2.5, "bytes": list(b"Hello")}],
    }  # fmt: skip
    assert bytes(b for entry in content for b in entry["bytes"]).decode() == "Hi😀 x"
    assert content[1]["token"] == "\ufffd" and content[1]["bytes"] == list(EMOJI[:2])
    assert content[3]["logprob"] == api.LOWEST_LOGPROB
    assert api.chat_logprobs(()) == {"content": [], "refusal": None}
    # Asked for with top_logprobs=0: each token comes with an empty list of alternatives.
    assert api.chat_logprobs([token("Hi", -0.1)])["content"][0]["top_logprobs"] == []  # type: ignore[index]


def test_legacy_logprobs_have_the_parallel_lists() -> None:
    assert api.legacy_logprobs(None) is None
    shaped = api.legacy_logprobs(TOKENS)
    assert shaped is not None
    assert shaped["tokens"] == ["Hi", "\ufffd", "\ufffd\ufffd", " x"]  # as the bytes decode, each alone
    assert shaped["token_logprobs"] == [-0.1, -0.7, -0.2, api.LOWEST_LOGPROB]
    # The text is "Hi😀 x": the emoji's two tokens share its offset.
    assert shaped["text_offset"] == [0, 2, 2, 3]
    assert shaped["top_logprobs"][0] == {"Hi": -0.1, "Hello": -2.5}
    # The sampled token is always there, also when it is not among the likeliest (N + 1 entries).
    assert shaped["top_logprobs"][3] == {" y": -0.3, " z": -1.4, " x": api.LOWEST_LOGPROB}
    assert api.legacy_logprobs(()) == {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


# -- request bodies to settings --------------------------------------------------------------------


def chat_body(**fields: object) -> api.ChatBody:
    return api.ChatBody.model_validate({"model": MODEL, "messages": QUESTION, **fields})


def completion_body(**fields: object) -> api.CompletionBody:
    return api.CompletionBody.model_validate({"model": MODEL, "prompt": "Once", **fields})


def test_logprobs_map_onto_the_settings() -> None:
    assert chat_body().settings().logprobs is None
    assert chat_body(logprobs=False).settings().logprobs is None
    assert chat_body(logprobs=True).settings().logprobs == 0
    assert chat_body(logprobs=True, top_logprobs=0).settings().logprobs == 0
    assert chat_body(logprobs=True, top_logprobs=MAX_LOGPROBS).settings().logprobs == MAX_LOGPROBS
    assert completion_body().settings().logprobs is None
    assert completion_body(logprobs=0).settings().logprobs == 0
    assert completion_body(logprobs=api.MAX_LEGACY_LOGPROBS).settings().logprobs == api.MAX_LEGACY_LOGPROBS


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body(logprobs=True, top_logprobs=MAX_LOGPROBS + 1), "top_logprobs"),
        (chat_body(logprobs=True, top_logprobs=-1), "top_logprobs"),
        (chat_body(top_logprobs=3), "top_logprobs"),
        (chat_body(logprobs=False, top_logprobs=0), "top_logprobs"),
        (completion_body(logprobs=api.MAX_LEGACY_LOGPROBS + 1), "logprobs"),
        (completion_body(logprobs=-1), "logprobs"),
    ],
)
def test_a_bad_logprobs_request_is_an_api_error_naming_its_field(body: api.SamplingBody, param: str) -> None:
    with pytest.raises(api.ApiError) as caught:
        body.settings()
    assert caught.value.status == 400
    assert caught.value.body["error"]["param"] == param
    assert param in caught.value.body["error"]["message"]


# -- the app on a scripted engine: where the log-probabilities go ------------------------------------


def scored(words: Sequence[str], top_n: int) -> tuple[TokenLogprob, ...]:
    """One token per word, each the likeliest of ``top_n`` alternatives."""
    tokens = []
    for index, word in enumerate(words):
        chosen = token(word, -0.25, token_id=index)
        others = [token(f"#{rank}", -1.0 - rank, token_id=1000 + rank) for rank in range(1, top_n)]
        tokens.append(replace(chosen, top=(chosen, *others)[:top_n]))
    return tuple(tokens)


@dataclass
class ScoredEngine(FakeEngine):
    """The fake engine, whose final chunk carries log-probabilities when the settings ask for them."""

    def stream(
        self, messages: list[Message], settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        settings = settings or GenerationSettings()
        words: list[str] = []
        for chunk in super().stream(messages, settings, cancel):
            if chunk.stats is None:
                words.append(chunk.text)
                yield chunk
            elif settings.logprobs is None:
                yield chunk
            else:
                yield replace(chunk, logprobs=scored(words, settings.logprobs))

    def complete(
        self, prompt: str, settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        return self.stream([{"role": "user", "content": prompt}], settings, cancel)


@pytest.fixture(scope="module")
def scripted() -> Iterator[TestClient]:
    with TestClient(create_app(lambda: ScoredEngine(), "fake")) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        yield client


def events(client: TestClient, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json={"model": "fake", "stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line[len("data: ") :] for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_streamed_chat_sends_its_logprobs_in_one_chunk_before_the_finishing_one(scripted: TestClient) -> None:
    body = {"messages": QUESTION, "logprobs": True, "top_logprobs": 2, "stream_options": {"include_usage": True}}
    role, *texts, with_logprobs, finishing, usage = events(scripted, "/v1/chat/completions", body)
    text = "".join(event["choices"][0]["delta"]["content"] for event in texts)
    assert text == "You said: " + QUESTION[0]["content"]
    assert all(event["choices"][0]["logprobs"] is None for event in (role, *texts, finishing))
    choice = with_logprobs["choices"][0]
    assert choice["delta"] == {"content": ""} and choice["finish_reason"] is None
    assert "".join(entry["token"] for entry in choice["logprobs"]["content"]) == text
    assert all(len(entry["top_logprobs"]) == 2 for entry in choice["logprobs"]["content"])
    assert finishing["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []


def test_a_streamed_chat_without_logprobs_has_no_extra_chunk(scripted: TestClient) -> None:
    role, *texts, finishing = events(scripted, "/v1/chat/completions", {"messages": QUESTION})
    assert all(event["choices"][0]["delta"]["content"] for event in texts)
    assert all(event["choices"][0]["logprobs"] is None for event in (role, *texts, finishing))


def test_a_whole_reply_carries_its_logprobs(scripted: TestClient) -> None:
    chat = scripted.post("/v1/chat/completions", json={"model": "fake", "messages": QUESTION, "logprobs": True})
    content = chat.json()["choices"][0]["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == chat.json()["choices"][0]["message"]["content"]
    assert all(entry["top_logprobs"] == [] for entry in content)
    text = scripted.post("/v1/completions", json={"model": "fake", "prompt": "a b", "logprobs": 1}).json()
    legacy = text["choices"][0]["logprobs"]
    assert "".join(legacy["tokens"]) == text["choices"][0]["text"]
    assert set(legacy) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}


def test_a_streamed_completion_sends_its_logprobs_in_one_chunk_before_the_finishing_one(scripted: TestClient) -> None:
    *texts, with_logprobs, finishing = events(scripted, "/v1/completions", {"prompt": "a b c", "logprobs": 2})
    text = "".join(event["choices"][0]["text"] for event in texts)
    assert all(event["choices"][0]["logprobs"] is None for event in (*texts, finishing))
    choice = with_logprobs["choices"][0]
    assert choice["text"] == "" and choice["finish_reason"] is None
    assert "".join(choice["logprobs"]["tokens"]) == text
    assert finishing["choices"][0]["finish_reason"] == "stop"


# -- `ovchat serve` on the real default model, read by the openai client ---------------------------

slow = pytest.mark.slow
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def server(default_model_ir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(default_model_ir, tmp_path_factory.mktemp("serve-logprobs"), "serve-logprobs") as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def check_content(content: Sequence[object] | None, text: str, top: int) -> None:
    """The chat's logprobs.content for a greedy reply ``text``: one entry per token, whose bytes make the
    text, each the likeliest of its ``top`` alternatives, sorted, with probabilities summing to at most 1."""
    assert content, "no log-probabilities"
    assert bytes(b for entry in content for b in entry.bytes).decode() == text  # type: ignore[attr-defined]
    assert "".join(entry.token for entry in content) == text  # type: ignore[attr-defined]
    for entry in content:
        alternatives = entry.top_logprobs  # type: ignore[attr-defined]
        assert entry.logprob <= 0  # type: ignore[attr-defined]
        assert len(alternatives) == top
        logprobs = [alternative.logprob for alternative in alternatives]
        assert logprobs == sorted(logprobs, reverse=True)
        assert all(logprob <= 0 for logprob in logprobs)
        assert sum(math.exp(logprob) for logprob in logprobs) <= 1 + 1e-6
        best = alternatives[0]
        assert (best.token, best.bytes) == (entry.token, entry.bytes)  # type: ignore[attr-defined]
        assert best.logprob == pytest.approx(entry.logprob)  # type: ignore[attr-defined]


def ask(client: openai.OpenAI, **more: Any) -> Any:
    request = {"model": MODEL, "messages": QUESTION, "max_tokens": 48, **GREEDY_BODY, **more}
    return client.chat.completions.create(**request)


@slow
def test_a_reply_carries_one_logprob_per_token_with_its_alternatives(client: openai.OpenAI) -> None:
    reply = ask(client, logprobs=True, top_logprobs=5)
    choice = reply.choices[0]
    assert choice.message.content and "Paris" in choice.message.content
    assert choice.logprobs is not None and choice.logprobs.refusal is None
    check_content(choice.logprobs.content, choice.message.content, 5)
    # Every generated token is there but the end-of-turn token, which is not part of the reply.
    assert reply.usage is not None
    ended_by_eos = choice.finish_reason == "stop"
    assert len(choice.logprobs.content or []) == reply.usage.completion_tokens - ended_by_eos


@slow
def test_a_streamed_reply_sends_the_logprobs_in_one_chunk_before_the_last(client: openai.OpenAI) -> None:
    whole = ask(client, logprobs=True, top_logprobs=5)
    chunks = list(ask(client, logprobs=True, top_logprobs=5, stream=True))
    *texts, with_logprobs, finishing = chunks
    text = "".join(chunk.choices[0].delta.content or "" for chunk in texts)
    assert text == whole.choices[0].message.content
    assert all(chunk.choices[0].logprobs is None for chunk in (*texts, finishing))
    assert with_logprobs.choices[0].delta.content == "" and with_logprobs.choices[0].finish_reason is None
    assert finishing.choices[0].finish_reason == whole.choices[0].finish_reason
    streamed = with_logprobs.choices[0].logprobs
    assert streamed is not None and streamed.content is not None
    check_content(streamed.content, text, 5)
    expected = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [entry.token for entry in streamed.content] == [entry.token for entry in expected or []]
    assert [entry.logprob for entry in streamed.content] == pytest.approx([e.logprob for e in expected or []], abs=1e-3)


@slow
def test_the_clients_stream_helper_gathers_the_logprobs(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, max_tokens=48, logprobs=True, top_logprobs=5, **GREEDY_BODY,  # type: ignore[arg-type]
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "logprobs.content.done" in kinds
    choice = final.choices[0]
    assert choice.message.content and choice.logprobs is not None
    check_content(choice.logprobs.content, choice.message.content, 5)


@slow
def test_twenty_alternatives_are_the_most(client: openai.OpenAI) -> None:
    reply = ask(client, logprobs=True, top_logprobs=MAX_LOGPROBS, max_tokens=6)
    assert reply.choices[0].logprobs is not None
    check_content(reply.choices[0].logprobs.content, reply.choices[0].message.content or "", MAX_LOGPROBS)


@slow
def test_logprobs_without_top_logprobs_have_no_alternatives(client: openai.OpenAI) -> None:
    reply = ask(client, logprobs=True, max_tokens=6)
    assert reply.choices[0].logprobs is not None
    content = reply.choices[0].logprobs.content or []
    assert len(content) == 6 and all(entry.top_logprobs == [] and entry.logprob <= 0 for entry in content)


@slow
def test_logprobs_off_are_null(client: openai.OpenAI) -> None:
    assert ask(client, max_tokens=6).choices[0].logprobs is None
    assert ask(client, max_tokens=6, logprobs=False).choices[0].logprobs is None
    chunks = list(ask(client, max_tokens=6, stream=True))
    assert all(chunk.choices[0].logprobs is None for chunk in chunks)
    assert all(chunk.choices[0].delta.content for chunk in chunks[1:-1])  # no extra empty chunk


@slow
@pytest.mark.parametrize(
    "fields",
    [
        {"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1},
        {"logprobs": True, "top_logprobs": -1},
        {"top_logprobs": 3},
        {"logprobs": False, "top_logprobs": 2},
    ],
)
def test_a_bad_top_logprobs_is_a_400_naming_it(client: openai.OpenAI, server: ServerProcess, fields: dict) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **fields)
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "top_logprobs" and "top_logprobs" in caught.value.message
    body = {"model": MODEL, "messages": QUESTION, "stream": True, **fields}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400  # before the stream begins
    assert response.json()["error"]["param"] == "top_logprobs"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@slow
def test_completions_give_the_legacy_shape(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, logprobs=3, **GREEDY_BODY)  # type: ignore[arg-type]
    choice = reply.choices[0]
    legacy = choice.logprobs
    assert legacy is not None and legacy.tokens and legacy.token_logprobs and legacy.top_logprobs
    assert legacy.text_offset is not None and reply.usage is not None
    count = reply.usage.completion_tokens
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == len(legacy.text_offset)
    assert len(legacy.tokens) == count == 8
    assert "".join(legacy.tokens) == choice.text
    assert legacy.text_offset == [len("".join(legacy.tokens[:index])) for index in range(count)]
    for chosen, logprob, top in zip(legacy.tokens, legacy.token_logprobs, legacy.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4  # the 3 likeliest, and the chosen token if it is not among them
        assert top[chosen] == pytest.approx(logprob)
        assert max(top, key=top.__getitem__) == chosen  # greedy
        assert all(value <= 0 for value in top.values())
    streamed = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, logprobs=3, stream=True, **GREEDY_BODY)  # type: ignore[arg-type]
    )
    *texts, with_logprobs, finishing = streamed
    assert "".join(chunk.choices[0].text for chunk in texts) == choice.text
    assert with_logprobs.choices[0].text == "" and with_logprobs.choices[0].logprobs is not None
    assert with_logprobs.choices[0].logprobs.tokens == legacy.tokens
    assert finishing.choices[0].finish_reason == "length"


@slow
def test_completions_take_at_most_five_logprobs(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=api.MAX_LEGACY_LOGPROBS + 1)
    assert caught.value.param == "logprobs"
