"""The server's app in this process, on a scripted engine: /health while the model loads and when loading
fails, an error after streaming has begun, and how OpenAI's request bodies become generation settings."""

from __future__ import annotations

import json
import threading

import pytest
from fakes import FakeEngine
from fastapi.testclient import TestClient

from ovchat.errors import OvchatError
from ovchat.server import openai_api as api
from ovchat.server.app import create_app

MODEL = "fake"
QUESTION = [{"role": "user", "content": "hello"}]


def wait_for_health(client: TestClient, status_code: int) -> dict:
    for _ in range(200):
        response = client.get("/health")
        if response.status_code == status_code and response.json()["status"] != "loading":
            return response.json()
        threading.Event().wait(0.05)
    raise AssertionError(f"/health never answered {status_code}")


def test_health_is_503_while_loading_then_200() -> None:
    loaded = threading.Event()

    def load() -> FakeEngine:
        loaded.wait(timeout=30)
        return FakeEngine()

    with TestClient(create_app(load, MODEL)) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/health").json() == {"status": "loading"}
        early = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION})
        assert early.status_code == 503
        assert "still loading" in early.json()["error"]["message"]
        loaded.set()
        assert wait_for_health(client, 200) == {"status": "ok", "model": MODEL}
        reply = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION})
        assert reply.json()["choices"][0]["message"]["content"] == "You said: hello"


def test_a_failed_load_is_reported_by_health_and_on_ready() -> None:
    reported: list[str | None] = []

    def load() -> FakeEngine:
        raise OvchatError("model folder /nowhere does not exist; export one with export_ir.py")

    with TestClient(create_app(load, MODEL, on_ready=reported.append)) as client:
        health = wait_for_health(client, 503)
    assert health["status"].startswith("failed: model folder /nowhere does not exist")
    assert reported == ["model folder /nowhere does not exist; export one with export_ir.py"]


def test_an_error_after_the_stream_began_is_an_error_event_then_done() -> None:
    def fail_after_two_words(index: int, cancel: threading.Event) -> None:
        if index == 1:
            raise OvchatError("the device stopped answering")

    engine = FakeEngine(reply=lambda messages: "one two three four", on_chunk=fail_after_two_words)
    with TestClient(create_app(lambda: engine, MODEL)) as client:
        wait_for_health(client, 200)
        body = {"model": MODEL, "messages": QUESTION, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line[len("data: ") :] for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    decoded = [json.loads(event) for event in events[:-1]]
    assert [event["choices"][0]["delta"].get("content") for event in decoded[:3]] == ["", "one", " two"]
    assert decoded[-1] == {
        "error": {"message": "the device stopped answering", "type": "invalid_request_error", "param": None,
                  "code": None}
    }  # fmt: skip


def test_an_error_before_the_first_token_is_a_400_not_an_event() -> None:
    def refuse(messages: object) -> str:
        raise OvchatError("the conversation takes 9000 tokens, over the model's context of 8192")

    with TestClient(create_app(lambda: FakeEngine(reply=refuse), MODEL)) as client:
        wait_for_health(client, 200)
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "stream": True})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("the conversation takes 9000 tokens")


# -- request bodies to settings --------------------------------------------------------------------


def body(**fields: object) -> api.ChatBody:
    return api.ChatBody.model_validate({"model": MODEL, "messages": QUESTION, **fields})


def test_left_out_parameters_take_openais_defaults_not_the_pages() -> None:
    settings = body().settings()
    assert (settings.temperature, settings.top_p, settings.top_k, settings.repetition_penalty) == (1.0, 1.0, 0, 1.0)


def test_parameters_map_onto_the_settings() -> None:
    settings = body(
        temperature=0.2, top_p=0.5, top_k=7, repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=-0.5,
        seed=3, max_tokens=9, stop="END",
    ).settings()  # fmt: skip
    assert (settings.temperature, settings.top_p, settings.top_k, settings.repetition_penalty) == (0.2, 0.5, 7, 1.2)
    assert (settings.frequency_penalty, settings.presence_penalty, settings.seed) == (0.5, -0.5, 3)
    assert (settings.max_new_tokens, settings.stop) == (9, ("END",))
    assert body(max_tokens=9, max_completion_tokens=4, stop=["a", "b"]).settings().max_new_tokens == 4
    assert body(stop=["a", "b"]).settings().stop == ("a", "b")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"seed": -5}, "seed"),
        ({"top_k": -1}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ],
)
def test_a_bad_value_is_an_api_error_naming_its_parameter(fields: dict, param: str) -> None:
    with pytest.raises(api.ApiError) as caught:
        body(**fields).settings()
    assert caught.value.status == 400
    assert caught.value.body["error"]["param"] == param


def test_messages_become_the_engines_text_messages() -> None:
    chat = body(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "数学 😀"},
        ]
    ).chat()
    assert chat == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "数学 😀"},
    ]
