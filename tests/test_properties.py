"""Property-based tests (hypothesis) of the pieces every chat goes through: rendering the chat template, trimming
the history to the context, cutting stop strings out of a stream however it is chunked, and chats surviving
export and import. The template and trimming properties run on the tiny model's real openvino-genai tokenizer.

Every ``@settings`` here turns hypothesis' example database off (it would keep failing examples in ``.hypothesis/``
in the working folder) and its deadline off (the machine is shared, so a slow example is no failure). A bug a
property found is kept as an explicit row or ``@example``.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import assistant, system, user
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ovchat.chats.files import chat_to_dict, chat_to_markdown, load_chat, parse_chat, save_chat
from ovchat.chats.store import ConversationStore, title_from
from ovchat.engine import Engine
from ovchat.engine.backends.genai_tokenizer import GenaiTokenizer
from ovchat.engine.remote import estimate_tokens
from ovchat.engine.streaming import StopCutter
from ovchat.errors import OvchatError
from ovchat.prompt import (
    CHATML,
    LLAMA2,
    MODEL_TEMPLATE,
    PLAIN,
    ChatTemplate,
    FittedPrompt,
    Message,
    fit_to_context,
    render_prompt,
)
from ovchat.settings import GenerationSettings

PROPERTY = settings(deadline=None, database=None)

# -- strategies ---------------------------------------------------------------------------------------------------

# Text a chat template or a tokenizer could trip on, as whole pieces so that hypothesis puts them in often.
TRICKY_PIECES = (
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "[INST]",
    " [/INST]",
    "<<SYS>>",
    "</s>",
    "User:",
    "\nAssistant:",
    "{{ messages }}",
    "{% endfor %}",
    "数学是被发明还是被发现的？",
    "日本語",
    "😀",
    "👩‍💻",
    "\u202eRTL\u202c",
    "e\u0301",
    "\x00",
    "\x1b[31m",
    "\r\n",
    "\t",
    "\ufeff",
    "\ufffd",
)
# Any characters but lone surrogates (hypothesis' default), which are not text: see the bad-input table.
text_pieces = st.one_of(st.text(max_size=6), st.sampled_from(TRICKY_PIECES))
contents = st.lists(text_pieces, max_size=5).map("".join)
ROLES = ("system", "user", "assistant")
roles = st.sampled_from(ROLES)


@st.composite
def valid_chats(draw: st.DrawFn, content: st.SearchStrategy[str] = contents, max_size: int = 8) -> list[Message]:
    """A chat ready for a reply: any roles in any order (system messages mid-chat, a reply first, two users in a
    row), and the user's message last."""
    earlier = draw(st.lists(st.tuples(roles, content), max_size=max_size - 1))
    return [{"role": role, "content": text} for role, text in earlier] + [user(draw(content))]


def flat(lines: str) -> bool:
    return "\n" not in lines and "\r" not in lines


def appear_in_order(text: str, parts: list[str]) -> bool:
    """Whether ``parts`` occur in ``text`` one after another without overlapping (the leftmost match of each part
    after the previous one is the best choice, so a greedy scan decides it)."""
    position = 0
    for part in parts:
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


# -- 1. template rendering -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genai_tokenizer(tiny_irs: dict[str, Path]) -> GenaiTokenizer:
    import openvino_genai

    folder = tiny_irs["int8"]
    return GenaiTokenizer(openvino_genai.Tokenizer(str(folder)), folder)


TEMPLATES = (MODEL_TEMPLATE, CHATML, LLAMA2, PLAIN)


def shown_in_order(messages: list[Message], template: ChatTemplate) -> list[str]:
    """The contents in the order the template shows them: Llama-2's format puts every system message into the
    first user message's block; the others show the messages as they come."""
    if template is not LLAMA2:
        return [m["content"] for m in messages]
    systems = [m["content"] for m in messages if m["role"] == "system"]
    order: list[str] = []
    for message in messages:
        if message["role"] == "user" and systems:
            order += systems
            systems = []
        if message["role"] != "system":
            order.append(message["content"])
    return order


def generation_prefix(last_user: str, template: ChatTemplate) -> str:
    """How the prompt must end: the new message in its format, then the assistant's turn opened."""
    if template is LLAMA2:
        return f"{last_user} [/INST]"
    if template is PLAIN:
        return f"User: {last_user}\nAssistant:"
    # The tiny model's own template is ChatML too.
    return f"<|im_start|>user\n{last_user}<|im_end|>\n<|im_start|>assistant\n"


@settings(PROPERTY, max_examples=60)
@given(chat=valid_chats())
def test_any_valid_chat_renders_every_message_in_order_and_ends_with_the_assistants_turn(
    genai_tokenizer: GenaiTokenizer, chat: list[Message]
) -> None:
    before = copy.deepcopy(chat)
    for template in TEMPLATES:
        prompt = render_prompt(genai_tokenizer, chat, template)
        assert appear_in_order(prompt, shown_in_order(chat, template)), (template.name, prompt)
        assert prompt.endswith(generation_prefix(chat[-1]["content"], template)), (template.name, prompt)
        assert render_prompt(genai_tokenizer, copy.deepcopy(chat), template) == prompt  # deterministic
    assert chat == before  # rendering changes nothing in the caller's messages


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@settings(PROPERTY, max_examples=30)
@given(chat=valid_chats())
def test_the_genai_tokenizer_renders_any_chat_as_transformers_does(
    genai_tokenizer: GenaiTokenizer, hf_tokenizer: Any, chat: list[Message]
) -> None:
    for template in TEMPLATES:
        assert render_prompt(genai_tokenizer, chat, template) == render_prompt(hf_tokenizer, chat, template)


# A chat that is not ready for a reply, or not a chat at all: each row's list, and the words of its one-line error.
INVALID_CHATS = [
    pytest.param("hello", "messages must be a list", id="a string, not a list"),
    pytest.param({"role": "user", "content": "hi"}, "messages must be a list", id="one message, not a list"),
    pytest.param((user("hi"),), "messages must be a list", id="a tuple"),
    pytest.param([], "a chat needs at least one message", id="empty"),
    pytest.param(None, "a chat needs at least one message", id="None"),
    pytest.param([system("Be brief.")], "the last message must be the user's", id="system only"),
    pytest.param([user("hi"), assistant("hello")], "the last message must be the user's", id="ends with a reply"),
    pytest.param(["hi"], "message 0 has no valid role", id="a string as a message"),
    pytest.param([None], "message 0 has no valid role", id="None as a message"),
    pytest.param([[("role", "user")]], "message 0 has no valid role", id="pairs as a message"),
    pytest.param([{"content": "hi"}], "message 0 has no valid role", id="no role"),
    pytest.param([{"role": "tool", "content": "hi"}], "message 0 has no valid role", id="tool role"),
    pytest.param([{"role": "User", "content": "hi"}], "message 0 has no valid role", id="capitalised role"),
    pytest.param([{"role": "user\n", "content": "hi"}], "message 0 has no valid role", id="role with a newline"),
    pytest.param([{"role": ["user"], "content": "hi"}], "message 0 has no valid role", id="role in a list"),
    pytest.param([{"role": "user"}], "message 0 has no text content", id="no content"),
    pytest.param([{"role": "user", "content": None}], "message 0 has no text content", id="content None"),
    pytest.param([{"role": "user", "content": 42}], "message 0 has no text content", id="content a number"),
    pytest.param([{"role": "user", "content": b"hi"}], "message 0 has no text content", id="content bytes"),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "message 0 has no text content",
        id="OpenAI content parts",
    ),
    pytest.param(
        [user("a"), assistant("b"), {"role": "system", "content": {"text": "c"}}, user("d")],
        "message 2 has no text content",
        id="bad message mid-chat",
    ),
    pytest.param(
        [user("a\ud800b")],
        "message 0 is not valid Unicode text: a lone surrogate (U+D800) at character 1",
        id="a lone surrogate",
    ),
    pytest.param(
        [system("ok"), user("\udcff")],
        "message 1 is not valid Unicode text: the byte 0xFF, which is not UTF-8, at character 0",
        id="a byte that is not UTF-8",
    ),
]


@pytest.mark.parametrize(("messages", "problem"), INVALID_CHATS)
def test_an_invalid_chat_is_one_clear_line_and_the_next_chat_still_renders(
    genai_tokenizer: GenaiTokenizer, messages: Any, problem: str
) -> None:
    for template in TEMPLATES:
        with pytest.raises(OvchatError) as caught:
            render_prompt(genai_tokenizer, messages, template)
        assert problem in str(caught.value) and flat(str(caught.value)), str(caught.value)
    assert render_prompt(genai_tokenizer, [user("hi")]).endswith("<|im_start|>assistant\n")


@st.composite
def broken_chats(draw: st.DrawFn) -> tuple[list[Any], list[str]]:
    """A valid chat with one message made invalid, and the words of the error that must name it."""
    chat: list[Any] = draw(valid_chats(max_size=5))
    index = draw(st.integers(0, len(chat) - 1))
    not_text = st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text(), max_size=2))
    kind = draw(st.sampled_from(["role", "content", "message", "surrogate"]))
    if kind == "surrogate":  # JSON's "\udc00" escape, or a byte that is not UTF-8 in a command line
        text = chat[index]["content"]
        at = draw(st.integers(0, len(text)))
        lone = draw(st.characters(categories=["Cs"]))
        chat[index] = {**chat[index], "content": text[:at] + lone + text[at:]}
        return chat, [f"message {index} is not valid Unicode text: ", f" at character {at}"]
    if kind == "role":
        chat[index] = {
            **chat[index],
            "role": draw(st.one_of(st.text(), not_text).filter(lambda role: role not in ROLES)),
        }
        return chat, [f"message {index} has no valid role"]
    if kind == "content":
        chat[index] = {**chat[index], "content": draw(not_text)}
        return chat, [f"message {index} has no text content"]
    chat[index] = draw(st.one_of(st.text(), not_text))
    return chat, [f"message {index} has no valid role"]


@settings(PROPERTY, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_chats())
def test_any_chat_with_one_bad_message_is_one_line_naming_it_and_nothing_is_written(
    genai_tokenizer: GenaiTokenizer, engine: Engine, tmp_path: Path, case: tuple[list[Any], list[str]]
) -> None:
    messages, problem = case
    store = ConversationStore(tmp_path / "chats.sqlite3")  # one store for every example: it must stay empty
    for attempt in (
        lambda: render_prompt(genai_tokenizer, messages),
        lambda: engine.fit(messages, GenerationSettings()),
        lambda: store.import_chat(messages, "imported"),
    ):
        with pytest.raises(OvchatError) as caught:
            attempt()
        assert all(part in str(caught.value) for part in problem) and flat(str(caught.value)), str(caught.value)
    assert store.list() == []


# -- 2. history trimming -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_irs: dict[str, Path]) -> Engine:
    return Engine.load(tiny_irs["int8"], backend="genai")


def turn_starts(messages: list[Message]) -> list[int]:
    """Where the oldest messages may be cut: before the first message after the leading system prompt, and
    before every later user message."""
    head = 0
    while messages[head]["role"] == "system":
        head += 1
    return [head] + [index for index in range(head + 1, len(messages)) if messages[index]["role"] == "user"]


def check_trimming(
    messages: list[Message],
    encode: Callable[[list[Message]], Any],
    fit: Callable[[], Any],
    context_length: int,
    max_new_tokens: int,
) -> FittedPrompt | None:
    """The trimming contract, whatever counts the tokens; what ``fit`` kept, or None when it must be an error."""
    starts = turn_starts(messages)
    head = messages[: starts[0]]
    budget = context_length - max_new_tokens
    if budget <= 0:
        event("refused: max new tokens fill the context")
        with pytest.raises(OvchatError, match=r"max new tokens \(\d+\) must be below the model's context length"):
            fit()
        return None
    alone = len(encode([*head, messages[-1]]))
    if alone > budget:
        event("refused: the new message is too long")
        with pytest.raises(OvchatError) as caught:
            fit()
        assert f"the message is too long: the system prompt and the new message take {alone} tokens" in str(
            caught.value
        )
        assert flat(str(caught.value))
        return None
    fitted = fit()
    event("fits with old turns dropped" if fitted.trimmed_turns else "fits whole")
    assert len(fitted.token_ids) + max_new_tokens <= context_length
    # Whole oldest turns only, in order: the kept messages are the system prompt and a suffix cut at a turn start.
    cut = len(messages) - (len(fitted.messages) - len(head))
    assert cut in starts
    assert fitted.messages == head + messages[cut:]
    assert fitted.messages[-1] is messages[-1]
    assert fitted.trimmed_turns == starts.index(cut)
    # As little as possible is dropped: from the turn before on it would not fit.
    if fitted.trimmed_turns:
        assert len(encode(head + messages[starts[fitted.trimmed_turns - 1] :])) > budget
    return fitted


@settings(PROPERTY, max_examples=40)
@given(
    chat=valid_chats(st.lists(text_pieces, max_size=12).map("".join), max_size=10),
    # Often close to the tiny model's context of 512, where turns must go or nothing fits.
    max_new=st.one_of(st.integers(1, 600), st.integers(380, 511)),
)
def test_engine_fit_keeps_the_system_prompt_and_the_newest_whole_turns(
    engine: Engine, chat: list[Message], max_new: int
) -> None:
    settings_ = GenerationSettings(max_new_tokens=max_new)
    fitted = check_trimming(chat, engine.encode, lambda: engine.fit(chat, settings_), engine.context_length, max_new)
    if fitted is not None:
        # The ids are the kept prompt's, and give its text back.
        prompt = render_prompt(engine.tokenizer, fitted.messages, engine.template)
        assert engine.tokenizer.decode(list(fitted.token_ids)) == prompt


def estimated_ids(messages: list[Message]) -> range:
    """RemoteEngine's stand-in for token ids: only their number matters, and it comes from the estimate."""
    return range(estimate_tokens(messages))


@settings(PROPERTY, max_examples=100)
@given(chat=valid_chats(max_size=12), budget=st.integers(-5, 120), max_new=st.integers(1, 200))
def test_the_remote_estimate_trims_by_the_same_contract(chat: list[Message], budget: int, max_new: int) -> None:
    context = max(1, budget + max_new)
    check_trimming(
        chat,
        estimated_ids,
        lambda: fit_to_context(chat, estimated_ids, context, max_new),
        context,
        max_new,
    )


@settings(PROPERTY, max_examples=100)
@given(chat=valid_chats(), more=valid_chats(max_size=3), longer=contents)
def test_the_remote_estimate_grows_with_the_chat(chat: list[Message], more: list[Message], longer: str) -> None:
    # Trimming relies on it: dropping a turn never makes the estimate larger.
    assert estimate_tokens(chat) <= estimate_tokens(chat + more)
    assert estimate_tokens(chat) <= estimate_tokens([*chat[:-1], user(chat[-1]["content"] + longer)])


ENGLISH = ["Hello", "there,", "how", "are", "you", "today?", "The", "quick", "brown", "fox", "jumps.", "Thank", "you!"]


@settings(PROPERTY, max_examples=40, derandomize=True)
@given(
    chat=valid_chats(st.lists(st.sampled_from(ENGLISH), max_size=12).map(" ".join), max_size=12),
    max_new=st.integers(1, 511),
)
# The smallest case: one empty message is 3 tokens by the estimate and 17 in the tiny model's ChatML prompt.
@example(chat=[user("")], max_new=500)
def test_what_the_remote_estimate_keeps_fits_the_servers_real_context(
    engine: Engine, chat: list[Message], max_new: int
) -> None:
    # The tiny model is what tests/test_remote.py's `ovchat serve` serves; its engine counts as that server does.
    try:
        fitted = fit_to_context(chat, estimated_ids, engine.context_length, max_new)
    except OvchatError:
        return  # too long even by the estimate: refused before anything is sent
    assert len(engine.encode(fitted.messages)) + max_new <= engine.context_length


# -- 3. stop strings on any chunking -------------------------------------------------------------------------------


def cut_at_first_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The reference: the text up to the stop string that is complete first (the longest of those complete at
    that character), found character by character as a stream would find it; else the whole text."""
    for end in range(1, len(text) + 1):
        done = [stop for stop in stops if text[:end].endswith(stop)]
        if done:
            return text[: end - max(map(len, done))], True
    return text, False


def chunked(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]


def run_cutter(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], bool]:
    """What the engine shows of ``pieces``: it feeds them until a stop string is reached, else flushes the rest."""
    cutter = StopCutter(stops)
    shown: list[str] = []
    for piece in pieces:
        visible, stopped = cutter.feed(piece)
        shown.append(visible)
        if stopped:
            return shown, True
    shown.append(cutter.flush())
    return shown, False


# A small alphabet, so that stop strings occur, overlap and nest often; U+FFFD is a broken character, never shown.
stop_alphabet = st.sampled_from(list("ab数😀\ufffd\n"))
stop_texts = st.text(stop_alphabet, max_size=24)
stop_sets = st.lists(st.text(stop_alphabet, min_size=1, max_size=4), max_size=3).map(tuple)


@settings(PROPERTY, max_examples=300)
@given(text=stop_texts, stops=stop_sets, data=st.data())
def test_stop_strings_cut_the_same_text_however_the_stream_is_chunked(
    text: str, stops: tuple[str, ...], data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2), label="cuts")
    shown, stopped = run_cutter(stops, chunked(text, cuts))
    expected, expected_stop = cut_at_first_stop(text, stops)
    expected = expected.replace("\ufffd", "")
    assert ("".join(shown), stopped) == (expected, expected_stop)
    # Nothing is ever taken back: each piece shown extends what was shown before it.
    so_far = ""
    for piece in shown:
        so_far += piece
        assert expected.startswith(so_far)


@settings(PROPERTY, max_examples=300)
@given(text=st.text(st.sampled_from(list("ab数😀\n")), max_size=24), stops=stop_sets, data=st.data())
def test_the_cutter_holds_back_only_what_could_still_become_a_stop_string(
    text: str, stops: tuple[str, ...], data: st.DataObject
) -> None:
    pieces = chunked(text, data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2), label="cuts"))
    cutter = StopCutter(stops)
    fed = shown = ""
    for piece in pieces:
        fed += piece
        visible, stopped = cutter.feed(piece)
        shown += visible
        if stopped:
            return
        assert fed.startswith(shown)
        held = fed[len(shown) :]
        # Exactly the longest end of the text so far that begins a stop string, no more: the rest is shown at once.
        longest = max(
            (
                size
                for size in range(1, len(fed) + 1)
                for stop in stops
                if len(stop) > size and stop[:size] == fed[-size:]
            ),
            default=0,
        )
        assert len(held) == longest, (fed, shown, stops)
    assert shown + cutter.flush() == text


# The first three are what the properties above found in StopCutter (now fixed); every chunking must show the same.
STOP_CASES = [
    pytest.param(
        "abcd", ("abcd", "bc"), [["abcd"], ["a", "b", "c", "d"], ["ab", "cd"]], "a", id="the stop that ends first wins"
    ),
    pytest.param("abc", ("abc", "bc"), [["abc"], ["a", "b", "c"]], "", id="two ending together: the longer wins"),
    pytest.param("\ufffda", ("a",), [["\ufffda"], ["\ufffd", "a"]], "", id="a broken character before a stop"),
    pytest.param("x数学😀y", ("学😀",), [["x数学😀y"], list("x数学😀y")], "x数", id="CJK and emoji in a stop"),
]


@pytest.mark.parametrize(("text", "stops", "chunkings", "shown"), STOP_CASES)
def test_stop_cases_found_by_the_properties(
    text: str, stops: tuple[str, ...], chunkings: list[list[str]], shown: str
) -> None:
    for pieces in chunkings:
        assert "".join(pieces) == text
        visible, stopped = run_cutter(stops, pieces)
        assert ("".join(visible), stopped) == (shown, True), pieces


# -- 4. chats exported and imported ---------------------------------------------------------------------------------


any_chats = st.lists(st.tuples(roles, contents), max_size=8).map(
    lambda pairs: [{"role": role, "content": text} for role, text in pairs]
)
titles = st.one_of(st.none(), contents)


@settings(PROPERTY, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=any_chats, title=titles)
def test_any_chat_survives_a_chat_file_unchanged(tmp_path: Path, chat: list[Message], title: str | None) -> None:
    path = tmp_path / "chat.json"
    save_chat(path, chat, title)
    # An empty title is no title; any other is kept as it is.
    assert load_chat(path) == (chat, title or None)
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temp file left behind
    # The same text parsed directly, as a bare list of messages (the OpenAI shape), and with ASCII escapes.
    assert parse_chat(path.read_text(encoding="utf-8")) == (chat, title or None)
    assert parse_chat(json.dumps(chat)) == (chat, None)
    assert parse_chat(json.dumps(chat_to_dict(chat, title, app="x"), ensure_ascii=True)) == (chat, title or None)


@settings(PROPERTY, max_examples=60)
@given(chat=any_chats, title=titles)
def test_the_markdown_export_shows_every_message_in_order(chat: list[Message], title: str | None) -> None:
    names = {"system": "System", "user": "You", "assistant": "Assistant"}
    markdown = chat_to_markdown(chat, title)
    assert markdown.startswith(f"# {title}\n") if title else not markdown.startswith("# ")
    assert appear_in_order(markdown, [f"**{names[m['role']]}:**\n\n{m['content']}\n" for m in chat])


def one_line(text: str) -> str:
    return " ".join(text.split())


@settings(PROPERTY, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=any_chats, title=titles)
def test_any_chat_survives_the_store_as_its_documented_shape(
    tmp_path: Path, chat: list[Message], title: str | None
) -> None:
    store = ConversationStore(tmp_path / "chats.sqlite3")
    chat_id = store.import_chat(chat, title)
    # The store keeps the system messages as one system prompt (joined by blank lines, shown first unless blank)
    # and the title on one line, or made from the first user message.
    system_prompt = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
    turns = [m for m in chat if m["role"] != "system"]
    expected = ([system(system_prompt)] if system_prompt.strip() else []) + turns
    first_user = next((m["content"] for m in turns if m["role"] == "user"), "")
    expected_title = one_line(title or "") or title_from(first_user)
    assert store.export_chat(chat_id) == (expected, expected_title)
    assert expected_title and flat(expected_title)
    listed = next(info for info in store.list() if info.id == chat_id)
    assert (listed.title, listed.message_count) == (expected_title, len(turns))
    # Exported chats are in the store's shape already: exporting, saving, loading and importing again is a fixpoint.
    path = tmp_path / f"{chat_id}.json"
    save_chat(path, *store.export_chat(chat_id))
    again = store.import_chat(*load_chat(path))
    assert store.export_chat(again) == (expected, expected_title)
    assert store.get(again).system_prompt == (system_prompt if system_prompt.strip() else "")


# Text that is not Unicode (a lone surrogate from JSON's "\ud800", or a byte that is not UTF-8 kept by Python as
# U+DC80-U+DCFF) in a chat on its way into or out of a file or the store: one line, and nothing written.
LONE = "a\ud800b"
NOT_UTF8 = "ti\udcfftle"


def chat_json(content: str, title: str) -> str:
    return json.dumps({"format": "ovchat.chat", "version": 1, "title": title, "messages": [user(content)]})


NOT_UNICODE_CHATS = [
    pytest.param(
        lambda store, folder: parse_chat(chat_json(LONE, "t")),
        "message 0 is not valid Unicode text: a lone surrogate (U+D800) at character 1",
        id="parse_chat: a message",
    ),
    pytest.param(
        lambda store, folder: parse_chat(chat_json("hi", NOT_UTF8)),
        "the title is not valid Unicode text: the byte 0xFF, which is not UTF-8, at character 2",
        id="parse_chat: the title",
    ),
    pytest.param(
        lambda store, folder: store.import_chat([user("hi"), assistant(LONE)], "t"),
        "message 1 is not valid Unicode text: a lone surrogate (U+D800) at character 1",
        id="import_chat: a message",
    ),
    pytest.param(
        lambda store, folder: store.import_chat([user("hi")], NOT_UTF8),
        "title is not valid Unicode text",
        id="import_chat: the title",
    ),
    pytest.param(
        lambda store, folder: save_chat(folder / "chat.json", [user(LONE)]),
        "message 0 is not valid Unicode text",
        id="save_chat: a message",
    ),
    pytest.param(
        lambda store, folder: save_chat(folder / "chat.json", [user("hi")], NOT_UTF8),
        "title is not valid Unicode text",
        id="save_chat: the title",
    ),
]


@pytest.mark.parametrize(("attempt", "problem"), NOT_UNICODE_CHATS)
def test_a_chat_that_is_not_unicode_is_one_line_and_nothing_is_written(
    tmp_path: Path, attempt: Callable[[ConversationStore, Path], object], problem: str
) -> None:
    store = ConversationStore(tmp_path / "store" / "chats.sqlite3")
    folder = tmp_path / "files"
    folder.mkdir()
    with pytest.raises(OvchatError) as caught:
        attempt(store, folder)
    assert problem in str(caught.value) and flat(str(caught.value)), str(caught.value)
    assert store.list() == [] and list(folder.iterdir()) == []
    # The same store and folder still take a good chat.
    chat = [user("数学 😀"), assistant("ok")]
    save_chat(folder / "chat.json", chat, "good")
    assert store.export_chat(store.import_chat(*load_chat(folder / "chat.json"))) == (chat, "good")
