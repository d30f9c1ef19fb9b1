"""Bad requests against a real `ovchat serve` on the tiny model: raw HTTP with httpx, and a raw socket where
httpx is too well-behaved (a body shorter or longer than it says, a client that never reads its reply).

Every refusal is OpenAI's error object with a 4xx status (never a 500), and after every one the server
still answers a good request. Unknown fields are ignored, as vLLM and llama.cpp's server do.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import metrics, serve, wait_for

from ovchat.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_MESSAGES, MAX_STOP_STRINGS
from ovchat.server.process import ServerProcess

MODEL = "tiny"
QUESTION = [{"role": "user", "content": "hi"}]
GOOD = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0.0}
# The tiny model's context is 512 tokens and "hi" takes 19 of them: the longest reply it can make.
LONG_REPLY_TOKENS = 490
WRITE_TIMEOUT_S = 5
CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_irs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ("--model-name", MODEL, "--write-timeout", str(WRITE_TIMEOUT_S))
    with serve(tiny_irs["int8"], tmp_path_factory.mktemp("serve-bad"), "serve-bad", *flags) as process:
        yield process


def post(server: ServerProcess, body: object, path: str = CHAT) -> httpx.Response:
    # Python's own JSON: httpx's refuses NaN, and writes a lone surrogate as no UTF-8 can hold it.
    return httpx.post(f"{server.url}{path}", content=json.dumps(body), headers=JSON, timeout=60)


def assert_openai_error(response: httpx.Response, status: int, *words: str) -> dict:
    """The response is OpenAI's error object with ``status``, its one-line message naming ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and "\n" not in error["message"]
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


def assert_still_serves(server: ServerProcess, idle: bool = True) -> None:
    """A good request gets its reply; with ``idle``, no reply is left running afterwards."""
    reply = post(server, GOOD)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    if idle:
        assert metrics(server)[("ovchat_requests_active", ())] == 0


# -- bodies that are not a JSON object -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(b'{"model": ', ["not valid JSON"], id="truncated"),
        pytest.param(b"", ["must be a JSON object, not empty"], id="empty"),
        pytest.param(b"{'model': 'tiny'}", ["not valid JSON"], id="single-quotes"),
        pytest.param(b'{"model": "tiny"} trailing', ["not valid JSON"], id="trailing-garbage"),
        pytest.param(
            b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
            ["not valid JSON", "not UTF-8"],
            id="not-utf8",
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, ["not valid JSON", "nested too deeply"], id="nested-100k-deep"),
        pytest.param(b"[]", ["must be a JSON object", "an array"], id="array"),
        pytest.param(b'"hello"', ["must be a JSON object", "a string"], id="string"),
        pytest.param(b"null", ["must be a JSON object, not null"], id="null"),
        pytest.param(b"42", ["must be a JSON object", "a number"], id="number"),
        pytest.param(b"true", ["must be a JSON object", "a boolean"], id="boolean"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(server: ServerProcess, content: bytes, words: list[str]) -> None:
    response = httpx.post(f"{server.url}{CHAT}", content=content, headers=JSON, timeout=60)
    assert_openai_error(response, 400, *words)
    assert_still_serves(server)


# -- content types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "status", "words"),
    [
        pytest.param({"content": json.dumps(GOOD), "headers": {"content-type": "text/plain"}}, 415,
                     ["must be JSON", "this one is text/plain"], id="text-plain"),
        pytest.param({"data": {"model": MODEL, "max_tokens": "4"}}, 415,
                     ["this one is application/x-www-form-urlencoded"], id="form-urlencoded"),
        pytest.param({"files": {"body": ("body.json", json.dumps(GOOD), "application/json")}}, 415,
                     ["this one is multipart/form-data"], id="multipart-form"),
        pytest.param({"content": json.dumps(GOOD)}, 415, ["this request has no Content-Type"], id="no-content-type"),
        pytest.param({"content": json.dumps(GOOD), "headers": {"content-type": "application/xml"}}, 415,
                     ["this one is application/xml"], id="xml"),
        pytest.param({"content": json.dumps(GOOD), "headers": {"content-type": "application/json; charset=utf-8"}},
                     200, [], id="json-with-charset-is-read"),
        pytest.param({"content": json.dumps(GOOD), "headers": {"content-type": "application/merge-patch+json"}},
                     200, [], id="plus-json-is-read"),
    ],
)  # fmt: skip
def test_a_body_not_sent_as_json_is_a_415(server: ServerProcess, options: dict, status: int, words: list) -> None:
    response = httpx.post(f"{server.url}{CHAT}", timeout=60, **options)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert_openai_error(response, status, *words)
    assert_still_serves(server)


# -- oversized bodies ------------------------------------------------------------------------------


def oversized_body() -> bytes:
    text = "x" * DEFAULT_MAX_BODY_BYTES
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


def in_pieces(body: bytes, size: int = 2**16) -> Iterator[bytes]:
    """The body as a generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(
    ("sent", "status", "words"),
    [
        pytest.param("with-length", 413, [f"limit of {DEFAULT_MAX_BODY_BYTES} bytes"], id="content-length"),
        pytest.param("chunked", 413, [f"limit of {DEFAULT_MAX_BODY_BYTES} bytes"], id="chunked-no-length"),
        pytest.param("chunked-small", 200, [], id="chunked-within-the-limit-is-read"),
        pytest.param("chunked-long-text", 400, ["too long", "context"], id="chunked-too-long-for-the-model"),
    ],
)
def test_an_oversized_body_is_a_413_however_it_is_sent(
    server: ServerProcess, sent: str, status: int, words: list[str]
) -> None:
    if sent == "with-length":
        response = httpx.post(f"{server.url}{CHAT}", content=oversized_body(), headers=JSON, timeout=60)
        assert response.request.headers["content-length"] == str(len(oversized_body()))
    else:
        body = {
            "chunked": oversized_body(),
            "chunked-small": json.dumps(GOOD).encode(),
            "chunked-long-text": json.dumps({**GOOD, "messages": [{"role": "user", "content": "word " * 100_000}]})
            .encode(),
        }[sent]  # fmt: skip
        response = httpx.post(f"{server.url}{CHAT}", content=in_pieces(body), headers=JSON, timeout=60)
        assert "content-length" not in response.request.headers
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert_openai_error(response, status, *words)
    assert_still_serves(server)


# -- raw HTTP that httpx will not send -------------------------------------------------------------


def raw_exchange(server: ServerProcess, request: bytes, leave_after_sending: bool = False) -> bytes:
    """All the server answers to ``request`` sent as bytes on a fresh connection, until it closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        if leave_after_sending:
            return b""
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
        return answer


def raw_post(body: bytes, length: str | None = None, close: bool = True) -> bytes:
    """A chat request as bytes, its Content-Length ``length`` (default: the body's own)."""
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n")  # fmt: skip
    return head.encode() + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body


@pytest.mark.parametrize(
    ("request_bytes", "leave_after_sending", "status_line", "words"),
    [
        # Claims 100 MB and sends a few bytes: refused at once, nothing waited for or read.
        pytest.param(
            raw_post(b'{"model"', length=str(100 * 2**20)), False, b"HTTP/1.1 413", [b"limit of"], id="claims-100MB"
        ),
        # Says 1000 bytes, sends 10, leaves: nobody to answer, nothing breaks.
        pytest.param(raw_post(b'{"model": ', length="1000"), True, None, [], id="body-shorter-than-length-then-gone"),
        # Not HTTP at all: uvicorn's own plain 400, before any app code runs.
        pytest.param(b"HELLO THERE\r\n\r\n", False, b"HTTP/1.1 400", [b"Invalid HTTP request"], id="not-http"),
        pytest.param(
            raw_post(b"{}", length="abc"), False, b"HTTP/1.1 400", [b"Invalid HTTP request"], id="length-not-a-number"
        ),
    ],
)
def test_raw_http_a_client_library_would_not_send(
    server: ServerProcess,
    request_bytes: bytes,
    leave_after_sending: bool,
    status_line: bytes | None,
    words: list[bytes],
) -> None:
    answer = raw_exchange(server, request_bytes, leave_after_sending)
    if status_line is None:
        assert answer == b""
    else:
        assert answer.startswith(status_line), answer[:200]
        for word in words:
            assert word in answer
        if status_line == b"HTTP/1.1 413":
            assert_openai_error(httpx.Response(413, content=answer.partition(b"\r\n\r\n")[2]), 413, "limit of")
    assert_still_serves(server)


# -- fields ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"user": "someone", "metadata": {"a": "b"}, "store": False}, id="openai-fields-not-served"),
        pytest.param(
            {"logit_bias": {"50": 10}, "response_format": {"type": "text"}, "parallel_tool_calls": False},
            id="sampling-fields-not-served",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "none"},
            id="tools",
        ),
        pytest.param({"an_unknown_field": [1, 2, 3], "x-vendor": {"nested": True}}, id="made-up-fields"),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi", "name": "ann", "unknown": 1}]}, id="message-extras"
        ),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            id="stream-options-extras",
        ),
    ],
)
def test_unknown_fields_are_ignored(server: ServerProcess, extra: dict) -> None:
    response = post(server, {**GOOD, **extra})
    assert response.status_code == 200, response.text
    if extra.get("stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][len("data: ") :])["usage"]["completion_tokens"] > 0
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert_still_serves(server)


def turns(count: int) -> list[dict[str, str]]:
    """``count`` messages alternating user and assistant, ending with the user's (count is odd)."""
    return [{"role": ("user", "assistant")[index % 2], "content": f"turn {index}"} for index in range(count)]


@pytest.mark.parametrize(
    ("count", "status"),
    [
        pytest.param(DEFAULT_MAX_MESSAGES + 1, 400, id="one-over-the-limit"),
        pytest.param(10_001, 400, id="ten-thousand"),
        pytest.param(50_001, 400, id="fifty-thousand"),  # about 2.4 MB, under the body limit
        pytest.param(41, 200, id="forty-one-served"),
    ],
)
def test_thousands_of_messages_are_refused_naming_the_limit(server: ServerProcess, count: int, status: int) -> None:
    body = {**GOOD, "messages": turns(count)}
    assert len(json.dumps(body)) < DEFAULT_MAX_BODY_BYTES  # the message limit refuses it, not the body's size
    response = post(server, body)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        error = assert_openai_error(response, 400, f"{count} messages", f"limit of {DEFAULT_MAX_MESSAGES}")
        assert error["param"] == "messages"
    assert_still_serves(server)


# -- sampling settings and fields out of range or of the wrong type ---------------------------------

SETTINGS_CASES = [
    # (the request's changes, status, param, words in the message)
    ({"temperature": -1}, 400, "temperature", "temperature must be a number in [0, 5]"),
    ({"temperature": 6}, 400, "temperature", "temperature must be a number in [0, 5]"),
    ({"temperature": "hot"}, 400, "temperature", "valid number"),
    ({"temperature": "0.5"}, 400, "temperature", "valid number"),
    ({"temperature": True}, 400, "temperature", "valid number"),
    ({"temperature": float("nan")}, 400, "temperature", "not nan"),  # Python's JSON writes NaN, and reads it
    ({"top_p": 2}, 400, "top_p", "top_p must be a number in (0, 1]"),
    ({"top_p": 0}, 400, "top_p", "top_p must be a number in (0, 1]"),
    ({"top_p": [0.5]}, 400, "top_p", "valid number"),
    ({"top_k": -1}, 400, "top_k", "top_k must be an integer in [0, 10000]"),
    ({"top_k": 1.5}, 400, "top_k", "valid integer"),
    ({"max_tokens": 0}, 400, "max_tokens", "max_tokens must be an integer in [1, 32768], not 0"),
    ({"max_tokens": -5}, 400, "max_tokens", "max_tokens must be an integer in [1, 32768], not -5"),
    ({"max_tokens": 10**9}, 400, "max_tokens", "max_tokens must be an integer in [1, 32768]"),
    ({"max_tokens": 4000}, 400, None, "must be below the model's context length (512)"),
    ({"max_tokens": "4"}, 400, "max_tokens", "valid integer"),
    ({"max_tokens": 4.5}, 400, "max_tokens", "valid integer"),
    ({"max_completion_tokens": 0}, 400, "max_completion_tokens", "max_completion_tokens must be an integer"),
    ({"n": 2}, 400, "n", "only n=1"),
    ({"n": 0}, 400, "n", "only n=1"),
    ({"seed": "x"}, 400, "seed", "valid integer"),
    ({"seed": -1}, 400, "seed", "seed must be an integer in [0, 4294967295]"),
    ({"seed": 2**32}, 400, "seed", "seed must be an integer in [0, 4294967295]"),
    ({"stop": [f"stop {index}" for index in range(50)]}, 400, "stop", f"at most {MAX_STOP_STRINGS} strings, not 50"),
    ({"stop": [""]}, 400, "stop", "non-empty"),
    ({"stop": 5}, 400, "stop", "valid string"),
    ({"stop": ["ok", "\ud800"]}, 400, "stop", "lone surrogate"),
    ({"logprobs": 99}, 400, "logprobs", "valid boolean"),
    ({"logprobs": True, "top_logprobs": 99}, 400, "top_logprobs", "top_logprobs must be an integer in [0, 20]"),
    ({"top_logprobs": 3}, 400, "top_logprobs", "needs logprobs"),
    ({"repetition_penalty": 0}, 400, "repetition_penalty", "repetition_penalty must be a number"),
    ({"frequency_penalty": 3}, 400, "frequency_penalty", "frequency_penalty must be a number in [-2, 2]"),
    ({"presence_penalty": "x"}, 400, "presence_penalty", "valid number"),
    ({"stream": "yes"}, 400, "stream", "valid boolean"),
    ({"stream_options": "usage"}, 400, "stream_options", "valid dictionary"),
    ({"model": None}, 400, "model", "valid string"),
    ({"model": "gpt-4o"}, 404, "model", "'gpt-4o' is not served here"),
    ({"messages": None}, 400, "messages", "valid list"),
    ({"messages": []}, 400, "messages", "at least 1 item"),
    ({"messages": "hi"}, 400, "messages", "valid list"),
    ({"messages": [{"content": "hi"}]}, 400, "messages[0].role", "Field required"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages[0].role", "has role 'tool'"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "valid string"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, 400, "messages[0].content", "surrogate at character 1"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, None, "the last message must be the user's"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages[0].content", "reads text only"),
]  # fmt: skip


def case_id(change: dict) -> str:
    return json.dumps(change)[1:-1][:60]


@pytest.mark.parametrize(
    ("change", "status", "param", "words"),
    [pytest.param(*case, id=case_id(case[0])) for case in SETTINGS_CASES],
)
def test_a_setting_out_of_range_or_of_the_wrong_type_is_refused(
    server: ServerProcess, change: dict, status: int, param: str | None, words: str
) -> None:
    error = assert_openai_error(post(server, {**GOOD, **change}), status, words)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert_still_serves(server)


COMPLETION_CASES = [
    ({"prompt": None}, "prompt", "valid string"),
    ({"prompt": ["a", "b"]}, "prompt", "valid string"),
    ({"prompt": "\udfff"}, "prompt", "lone surrogate"),
    ({"logprobs": 99}, "logprobs", "logprobs must be an integer in [0, 5]"),
    ({"logprobs": True}, "logprobs", "valid integer"),
    ({"max_tokens": -5}, "max_tokens", "max_tokens must be an integer in [1, 32768]"),
]


@pytest.mark.parametrize(
    ("change", "param", "words"), [pytest.param(*case, id=case_id(case[0])) for case in COMPLETION_CASES]
)
def test_a_bad_completions_request_is_refused(server: ServerProcess, change: dict, param: str, words: str) -> None:
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 4, **change}
    error = assert_openai_error(post(server, body, path="/v1/completions"), 400, words)
    assert error["param"] == param
    assert_still_serves(server)


# -- methods and paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        pytest.param("GET", CHAT, 405, f"{CHAT} takes POST, not GET", id="get-chat"),
        pytest.param("PUT", "/v1/completions", 405, "takes POST, not PUT", id="put-completions"),
        pytest.param("DELETE", "/v1/models", 405, "/v1/models takes GET, not DELETE", id="delete-models"),
        pytest.param("POST", "/health", 405, "/health takes GET, not POST", id="post-health"),
        pytest.param("GET", "/nowhere", 404, "no route GET /nowhere", id="unknown-path"),
        pytest.param("POST", "/v1/embeddings", 404, "no route POST /v1/embeddings", id="route-not-served"),
        pytest.param("GET", "/v1", 404, "this server answers /v1/chat/completions", id="bare-v1"),
        pytest.param("GET", "/docs", 404, "no route GET /docs", id="no-api-docs"),
    ],
)
def test_a_wrong_method_or_path_is_a_4xx_in_openais_shape(
    server: ServerProcess, method: str, path: str, status: int, words: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=GOOD, timeout=60)
    assert_openai_error(response, status, words)
    assert_still_serves(server)


# -- clients that leave or never read --------------------------------------------------------------

GENERATED = ("ovchat_generation_tokens_total", ())


def replies_ended(server: ServerProcess) -> dict[str, float]:
    """Chat replies ended so far, by finish reason."""
    return {
        dict(labels)["finish"]: value
        for (name, labels), value in metrics(server).items()
        if name == "ovchat_requests_total" and dict(labels).get("endpoint") == "chat"
    }


def test_a_client_that_disconnects_mid_stream_cancels_its_reply(server: ServerProcess) -> None:
    # The tiny model makes its longest reply in well under a second, so on a busy machine a disconnect can land
    # after the reply has ended; each try is one stream left after its first event, until one lands mid-reply.
    body = {**GOOD, "max_tokens": LONG_REPLY_TOKENS, "stream": True}
    for _ in range(5):
        before, generated_before = replies_ended(server), metrics(server).get(GENERATED, 0)
        with httpx.stream("POST", f"{server.url}{CHAT}", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith("data: ")  # streaming has begun
        # Leaving the block closed the connection mid-stream.
        wait_for(lambda: sum(replies_ended(server).values()) == sum(before.values()) + 1, "the reply to end")  # noqa: B023
        ended = {finish: count - before.get(finish, 0) for finish, count in replies_ended(server).items()}
        generated = metrics(server)[GENERATED] - generated_before
        if ended.get("cancelled"):
            break
        assert ended.get("length") == 1 and generated == LONG_REPLY_TOKENS  # it had ended before the client left
    assert ended.get("cancelled") == 1, ended
    assert generated < LONG_REPLY_TOKENS  # it stopped before its end
    assert metrics(server)[("ovchat_requests_active", ())] == 0  # its slot is free
    assert_still_serves(server)


def server_side_send_queue(server_port: int, client_port: int) -> int | None:
    """Bytes of the reply the server's kernel still holds for the client's connection (/proc/net/tcp's
    tx_queue); None once the server has no socket for it."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local_port, remote_port) == (server_port, client_port):
            return int(fields[4].split(":")[0], 16)
    return None


def test_a_client_that_never_reads_blocks_nobody_and_is_dropped(server: ServerProcess) -> None:
    # A long streamed reply with every token's 20 alternatives (most of a megabyte) to a client whose
    # receive buffer is tiny and that never reads: its window shuts, the rest waits on the server's side.
    body = json.dumps({**GOOD, "max_tokens": LONG_REPLY_TOKENS, "stream": True, "logprobs": True,
                       "top_logprobs": 20}).encode()  # fmt: skip
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        slow.connect(("127.0.0.1", server.port))
        slow.sendall(raw_post(body, close=False))
        client_port = slow.getsockname()[1]
        wait_for(lambda: (server_side_send_queue(server.port, client_port) or 0) > 2**16, "the reply to back up")
        # Another client is served meanwhile, while the first one's reply is still stuck on its way.
        assert_still_serves(server, idle=False)
        assert (server_side_send_queue(server.port, client_port) or 0) > 2**16
        # After --write-timeout without the client taking a byte, the server drops the connection and
        # what it held for it (without it, the connection stays for as long as the client keeps it).
        wait_for(lambda: server_side_send_queue(server.port, client_port) is None, "the stalled client to be dropped",
                 timeout_s=60)  # fmt: skip
    finally:
        slow.close()
    assert_still_serves(server)
