"""Chat messages, the named prompt templates, choosing one, and fitting a chat into the context window."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from fakes import assistant, system, user
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ovchat.errors import OvchatError
from ovchat.prompt import (
    CHATML,
    LLAMA2,
    MODEL_TEMPLATE,
    PLAIN,
    ChatTemplate,
    Message,
    choose_template,
    fit_to_context,
    render_prompt,
    split_turns,
    validate_messages,
)

CHAT = [system("Be brief."), user("hi"), assistant("hello"), user("again")]


@pytest.fixture
def tokenizer(tiny_checkpoint: Path) -> Any:
    """A fresh copy per test: some tests drop its chat template."""
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def word_tokenizer(words: Iterable[str], **special_tokens: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words``, with no chat template; built offline in a few ms."""
    vocab = {"[UNK]": 0}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **special_tokens)


def flatten(turns: Iterable[list[Message]]) -> list[Message]:
    return [message for turn in turns for message in turn]


# validate_messages


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "at least one message"),
        ([{"role": "bot", "content": "hi"}], "message 0 has no valid role"),
        ([user("hi"), {"content": "no role"}, user("hi")], "message 1 has no valid role"),
        (["hi"], "message 0 has no valid role"),
        ([{"role": "User", "content": "hi"}], "message 0 has no valid role"),
        ([user("a"), assistant("b"), {"role": "user", "content": None}], "message 2 has no text content"),
        ([{"role": "user", "content": 5}], "message 0 has no text content"),
        ([{"role": "user", "content": ["hi"]}], "message 0 has no text content"),
        ([{"role": "user"}], "message 0 has no text content"),
        ([user("hi"), assistant("hello")], "last message must be the user's"),
        ([system("Be brief.")], "last message must be the user's"),
        ([user("hi"), system("Be brief.")], "last message must be the user's"),
    ],
)
def test_invalid_messages_are_rejected(messages: list[Any], problem: str) -> None:
    with pytest.raises(OvchatError, match=problem):
        validate_messages(messages)


@pytest.mark.parametrize(
    "messages",
    [[user("")], CHAT, [system("a"), system("b"), user("c")], [user("a"), user("b")], [assistant("a"), user("b")]],
)
def test_valid_messages_pass(messages: list[Message]) -> None:
    assert validate_messages(messages) is None


# render_prompt: the tokenizer's own template and the fallbacks, written out from each format's definition

CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nhi<|im_end|>\n"
    "<|im_start|>assistant\nhello<|im_end|>\n"
    "<|im_start|>user\nagain<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_model_template_renders_the_tokenizers_own_chatml(tokenizer: Any) -> None:
    assert render_prompt(tokenizer, CHAT) == CHATML_TEXT
    assert render_prompt(tokenizer, CHAT, MODEL_TEMPLATE) == CHATML_TEXT


def test_chatml_fallback(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, CHAT, CHATML) == CHATML_TEXT
    assert render_prompt(tokenizer, [user("hi")], CHATML) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_llama2_fallback_with_llama_special_tokens() -> None:
    llama = word_tokenizer(["[INST]", "[/INST]"], bos_token="<s>", eos_token="</s>")
    expected = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] again [/INST]"
    assert render_prompt(llama, CHAT, LLAMA2) == expected


def test_llama2_fallback_without_a_system_prompt() -> None:
    llama = word_tokenizer(["[INST]", "[/INST]"], bos_token="<s>", eos_token="</s>")
    assert render_prompt(llama, CHAT[1:], LLAMA2) == "<s>[INST] hi [/INST] hello </s><s>[INST] again [/INST]"
    assert render_prompt(llama, [user("hi")], LLAMA2) == "<s>[INST] hi [/INST]"
    # An empty system prompt adds no <<SYS>> block.
    assert render_prompt(llama, [system(""), user("hi")], LLAMA2) == "<s>[INST] hi [/INST]"


def test_llama2_fallback_uses_the_tokenizers_own_bos_and_eos(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert (bos, eos) == ("<|im_start|>", "<|im_end|>")
    expected = f"{bos}[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] hello {eos}{bos}[INST] again [/INST]"
    assert render_prompt(tokenizer, CHAT, LLAMA2) == expected


def test_llama2_fallback_on_a_tokenizer_without_bos_or_eos() -> None:
    bare = word_tokenizer(["hi"])
    assert bare.bos_token is None and bare.eos_token is None
    expected = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] hello [INST] again [/INST]"
    assert render_prompt(bare, CHAT, LLAMA2) == expected


def test_plain_fallback(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, CHAT, PLAIN) == "Be brief.\n\nUser: hi\nAssistant: hello\nUser: again\nAssistant:"
    assert render_prompt(tokenizer, [user("hi")], PLAIN) == "User: hi\nAssistant:"


def test_fallbacks_ignore_the_tokenizers_own_template(tokenizer: Any) -> None:
    assert tokenizer.chat_template
    assert render_prompt(tokenizer, CHAT, PLAIN) == "Be brief.\n\nUser: hi\nAssistant: hello\nUser: again\nAssistant:"


def test_each_format_ends_an_assistant_reply_with_its_own_end_marker(tokenizer: Any) -> None:
    # The end of turn / stop string that the engine watches for is what the format puts after a reply.
    chatml = render_prompt(tokenizer, CHAT, CHATML)
    assert "hello" + CHATML.end_of_turn in chatml
    plain = render_prompt(tokenizer, CHAT, PLAIN)
    assert all("hello" + stop in plain for stop in PLAIN.stop)
    # ... and it is not already in the prompt's open assistant turn.
    assert not chatml.endswith(CHATML.end_of_turn)
    assert not any(plain.endswith(stop) for stop in PLAIN.stop)


def test_model_template_on_a_tokenizer_without_one_is_an_error(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    with pytest.raises(OvchatError, match="no chat template"):
        render_prompt(tokenizer, CHAT)


def test_render_prompt_validates_the_messages(tokenizer: Any) -> None:
    with pytest.raises(OvchatError, match="last message"):
        render_prompt(tokenizer, CHAT[:3])
    with pytest.raises(OvchatError, match="at least one"):
        render_prompt(tokenizer, [], PLAIN)


def test_a_template_error_becomes_an_ovchat_error(tokenizer: Any) -> None:
    strict = ChatTemplate("strict", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(OvchatError, match=r"strict .*roles must alternate"):
        render_prompt(tokenizer, CHAT, strict)


@pytest.mark.parametrize(
    "messages",
    [
        [system("Be brief."), system("Answer in French."), user("hi")],
        [user("hi"), assistant("hello"), system("Answer in French."), user("again")],
    ],
)
def test_llama2_never_renders_a_system_message_as_an_assistant_reply(messages: list[Message]) -> None:
    llama = word_tokenizer(["[INST]", "[/INST]"], bos_token="<s>", eos_token="</s>")
    try:
        prompt = render_prompt(llama, messages, LLAMA2)
    except OvchatError:
        return  # refusing such a chat would be fine too
    assert " Answer in French. </s>" not in prompt
    assert "Answer in French." in prompt


def test_llama2_keeps_the_system_prompt_when_the_chat_starts_with_an_assistant_message() -> None:
    llama = word_tokenizer(["[INST]", "[/INST]"], bos_token="<s>", eos_token="</s>")
    try:
        prompt = render_prompt(llama, [system("Answer in French."), assistant("Bonjour!"), user("hi")], LLAMA2)
    except OvchatError:
        return  # refusing such a chat would be fine too
    assert "Answer in French." in prompt


# choose_template


def test_auto_picks_the_models_own_template(tokenizer: Any) -> None:
    assert choose_template(tokenizer) is MODEL_TEMPLATE
    assert choose_template(tokenizer, "auto") is MODEL_TEMPLATE
    assert choose_template(tokenizer, "model") is MODEL_TEMPLATE


def test_auto_detects_chatml_from_the_vocabulary(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    assert choose_template(tokenizer, "auto") is CHATML
    assert choose_template(word_tokenizer(["<|im_start|>", "<|im_end|>", "[INST]"])) is CHATML


@pytest.mark.parametrize(
    ("words", "special_tokens"),
    [
        (["[INST]", "[/INST]"], {}),
        (["[INST]"], {"bos_token": "<|begin|>", "eos_token": "<|end|>"}),
        (["<s>", "</s>"], {"bos_token": "<s>"}),
        (["hello"], {"bos_token": "<s>", "eos_token": "</s>"}),
    ],
)
def test_auto_detects_llama2(words: list[str], special_tokens: dict[str, str]) -> None:
    assert choose_template(word_tokenizer(words, **special_tokens)) is LLAMA2


@pytest.mark.parametrize(
    ("words", "special_tokens"),
    [
        (["hello", "world"], {}),
        (["hello"], {"bos_token": "<s>", "eos_token": "<eos>"}),  # <s> but no </s>
        (["</s>"], {"bos_token": "<bos>"}),  # </s> but bos is not <s>
        (["<|im_start|>", "hello"], {}),  # only half of ChatML
        (["<|im_end|>", "INST"], {}),
    ],
)
def test_auto_falls_back_to_plain(words: list[str], special_tokens: dict[str, str]) -> None:
    assert choose_template(word_tokenizer(words, **special_tokens)) is PLAIN


@pytest.mark.parametrize(("name", "template"), [("chatml", CHATML), ("llama2", LLAMA2), ("plain", PLAIN)])
def test_explicit_names_are_honoured(tokenizer: Any, name: str, template: ChatTemplate) -> None:
    assert choose_template(tokenizer, name) is template
    assert choose_template(word_tokenizer(["hello"]), name) is template
    assert template.name == name


def test_model_on_a_tokenizer_without_a_template_is_an_error(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    with pytest.raises(OvchatError, match="no chat template"):
        choose_template(tokenizer, "model")
    with pytest.raises(OvchatError, match="no chat template"):
        choose_template(word_tokenizer(["[INST]"]), "model")


@pytest.mark.parametrize("name", ["ChatML", "llama3", "", "default"])
def test_unknown_template_name_is_an_error(tokenizer: Any, name: str) -> None:
    with pytest.raises(OvchatError, match=f"unknown chat template {name!r}"):
        choose_template(tokenizer, name)


# split_turns


def test_split_turns_keeps_leading_system_messages_apart() -> None:
    messages = [
        system("a"),
        system("b"),
        user("1"),
        assistant("2"),
        user("3"),
        assistant("4"),
        assistant("5"),
        user("6"),
        user("7"),
    ]
    head, turns = split_turns(messages)
    assert head == messages[:2]
    assert turns == [messages[2:4], messages[4:7], [messages[7]], [messages[8]]]


def test_split_turns_without_a_system_prompt() -> None:
    assert split_turns([user("hi")]) == ([], [[user("hi")]])
    assert split_turns(CHAT[1:]) == ([], [CHAT[1:3], CHAT[3:]])


def test_a_system_message_mid_chat_belongs_to_its_turn() -> None:
    messages = [user("1"), assistant("2"), system("3"), user("4")]
    assert split_turns(messages) == ([], [messages[:3], [messages[3]]])


roles = st.sampled_from(["system", "user", "assistant"])


@settings(max_examples=100)
@given(st.lists(roles, max_size=12))
def test_split_turns_partitions_the_chat_at_user_messages(role_list: list[str]) -> None:
    messages: list[Message] = [{"role": role, "content": str(index)} for index, role in enumerate(role_list)]  # type: ignore[misc]
    head, turns = split_turns(messages)
    assert head + flatten(turns) == messages
    assert all(message["role"] == "system" for message in head)
    assert all(turns)
    if turns:
        assert turns[0][0]["role"] != "system"
    for index, turn in enumerate(turns):
        assert all(message["role"] != "user" for message in turn[1:])
        if index > 0:
            assert turn[0]["role"] == "user"


# fit_to_context with a fake tokenizer: one token per word, 2 per message and 3 for the whole prompt

PROMPT_OVERHEAD = 3
MESSAGE_OVERHEAD = 2


def count_tokens(messages: list[Message]) -> int:
    return PROMPT_OVERHEAD + sum(MESSAGE_OVERHEAD + len(message["content"].split()) for message in messages)


def fake_encode(messages: list[Message]) -> list[int]:
    return list(range(count_tokens(messages)))


def words(tag: str, count: int) -> str:
    return " ".join([tag] * count)


# system 5 words (7 tokens); four old turns of user 3 + assistant 7 words (5 + 9 = 14 tokens); new user 4 words
# (6 tokens); plus 3: the system prompt and the new message alone take 16 tokens, each old turn adds 14.
LONG_SYSTEM = [system(words("s", 5))]
OLD_TURNS = [[user(words(f"u{index}", 3)), assistant(words(f"a{index}", 7))] for index in range(4)]
NEW = user(words("new", 4))
LONG_CHAT = LONG_SYSTEM + flatten(OLD_TURNS) + [NEW]


def test_fake_encode_matches_the_hand_count() -> None:
    assert count_tokens([*LONG_SYSTEM, NEW]) == 16
    assert count_tokens(LONG_CHAT) == 16 + 4 * 14


@pytest.mark.parametrize("budget", [72, 100, 1000])
def test_nothing_is_trimmed_when_the_chat_fits(budget: int) -> None:
    fitted = fit_to_context(LONG_CHAT, fake_encode, context_length=budget + 50, max_new_tokens=50)
    assert fitted.trimmed_turns == 0
    assert fitted.messages == LONG_CHAT
    assert fitted.token_ids == fake_encode(LONG_CHAT)


@pytest.mark.parametrize(
    ("budget", "trimmed"),
    [(71, 1), (58, 1), (57, 2), (44, 2), (43, 3), (30, 3), (29, 4), (16, 4)],
)
def test_the_oldest_whole_turns_are_dropped(budget: int, trimmed: int) -> None:
    fitted = fit_to_context(LONG_CHAT, fake_encode, context_length=budget + 50, max_new_tokens=50)
    assert fitted.trimmed_turns == trimmed
    assert fitted.messages == LONG_SYSTEM + flatten(OLD_TURNS[trimmed:]) + [NEW]
    assert fitted.token_ids == fake_encode(fitted.messages)
    assert len(fitted.token_ids) <= budget
    # As few turns as possible: keeping one more would not fit.
    assert count_tokens(LONG_SYSTEM + flatten(OLD_TURNS[trimmed - 1 :]) + [NEW]) > budget


def test_a_turn_with_several_replies_is_dropped_whole() -> None:
    messages = [user(words("a", 5)), assistant("b"), assistant("c"), user("d"), assistant("e"), user("f")]
    # Whole chat: 3 + 6 * 2 + 5 + 5 = 25 tokens; the first turn (3 messages) takes 13 of them.
    fitted = fit_to_context(messages, fake_encode, context_length=24 + 1, max_new_tokens=1)
    assert fitted.trimmed_turns == 1
    assert fitted.messages == messages[3:]
    assert fitted.messages[0]["role"] == "user"


def test_several_leading_system_messages_are_all_kept() -> None:
    messages = [system("a"), system("b"), user(words("x", 10)), assistant("y"), user("z")]
    fitted = fit_to_context(messages, fake_encode, context_length=20, max_new_tokens=5)
    assert fitted.trimmed_turns == 1
    assert fitted.messages == [system("a"), system("b"), user("z")]


@pytest.mark.parametrize("chat", [LONG_CHAT, [*LONG_SYSTEM, NEW], [NEW]])
def test_a_new_message_that_cannot_fit_alone_is_an_error(chat: list[Message]) -> None:
    alone = count_tokens([m for m in chat if m["role"] == "system"] + [NEW])
    with pytest.raises(OvchatError, match="too long") as caught:
        fit_to_context(chat, fake_encode, context_length=alone - 1 + 50, max_new_tokens=50)
    assert f"{alone} tokens" in str(caught.value)


@pytest.mark.parametrize(("context_length", "max_new_tokens"), [(100, 100), (100, 101), (1, 512)])
def test_max_new_tokens_must_be_below_the_context_length(context_length: int, max_new_tokens: int) -> None:
    with pytest.raises(OvchatError, match="must be below the model's context length") as caught:
        fit_to_context([user("hi")], fake_encode, context_length, max_new_tokens)
    assert f"({max_new_tokens})" in str(caught.value) and f"({context_length})" in str(caught.value)


@pytest.mark.parametrize("messages", [[], [system("Be brief.")]])
def test_a_chat_without_a_user_message_is_an_ovchat_error(messages: list[Message]) -> None:
    with pytest.raises(OvchatError):
        fit_to_context(messages, fake_encode, context_length=100, max_new_tokens=10)


# fit_to_context with the real tokenizer


def real_encoder(tokenizer: Any) -> Callable[[list[Message]], list[int]]:
    return lambda messages: tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kept_old_turns", [0, 1, 3, 6])
def test_fit_to_context_with_the_real_tokenizer(tokenizer: Any, kept_old_turns: int) -> None:
    encode = real_encoder(tokenizer)
    head = [system("You are a helpful assistant on OpenVINO.")]
    old = [
        [user(f"Question {i}: how are you today?"), assistant(f"Answer {i}: I am fine, thank you.")] for i in range(6)
    ]
    new = user("数学是被发明还是被发现的？ 😀")
    lengths = [len(encode(head + flatten(old[start:]) + [new])) for start in range(7)]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == 7
    budget = lengths[6 - kept_old_turns]
    fitted = fit_to_context(head + flatten(old) + [new], encode, context_length=budget + 64, max_new_tokens=64)
    assert fitted.trimmed_turns == 6 - kept_old_turns
    assert fitted.messages == head + flatten(old[6 - kept_old_turns :]) + [new]
    assert len(fitted.token_ids) == budget
    prompt = tokenizer.decode(fitted.token_ids)
    assert prompt == render_prompt(tokenizer, fitted.messages)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant on OpenVINO.<|im_end|>\n")
    assert prompt.endswith(f"<|im_start|>user\n{new['content']}<|im_end|>\n<|im_start|>assistant\n")
    # With one token less, one more turn has to go, or the new message no longer fits at all.
    if kept_old_turns:
        tighter = fit_to_context(head + flatten(old) + [new], encode, context_length=budget - 1 + 64, max_new_tokens=64)
        assert tighter.trimmed_turns == fitted.trimmed_turns + 1
    else:
        with pytest.raises(OvchatError, match="too long"):
            fit_to_context(head + flatten(old) + [new], encode, context_length=budget - 1 + 64, max_new_tokens=64)


def test_real_tokenizer_too_long_message(tokenizer: Any) -> None:
    encode = real_encoder(tokenizer)
    new = user("The quick brown fox jumps over the lazy dog. " * 20)
    alone = len(encode([new]))
    with pytest.raises(OvchatError, match="too long"):
        fit_to_context([user("hi"), assistant("hello"), new], encode, context_length=alone + 99, max_new_tokens=100)
    assert fit_to_context([new], encode, context_length=alone + 100, max_new_tokens=100).token_ids == encode([new])


# fit_to_context properties over random chats


@st.composite
def chats(draw: st.DrawFn, vocabulary: list[str]) -> tuple[list[Message], list[list[Message]]]:
    """A chat as (system messages, turns): old turns of a user message and 0-2 replies, then the new message."""
    counter = iter(range(10**6))

    def text() -> str:
        index = next(counter)
        return " ".join(f"{draw(st.sampled_from(vocabulary))}{index}" for _ in range(draw(st.integers(0, 12))))

    head = [system(text())] if draw(st.booleans()) else []
    turns = [
        [user(text())] + [assistant(text()) for _ in range(draw(st.integers(0, 2)))]
        for _ in range(draw(st.integers(0, 6)))
    ]
    return head, [*turns, [user(text())]]


def check_fit(
    head: list[Message],
    turns: list[list[Message]],
    encode: Callable[[list[Message]], list[int]],
    context_length: int,
    max_new_tokens: int,
) -> None:
    budget = context_length - max_new_tokens
    if budget <= 0:
        with pytest.raises(OvchatError, match=r"max new tokens \(\d+\) must be below"):
            fit_to_context(head + flatten(turns), encode, context_length, max_new_tokens)
        return
    if len(encode(head + turns[-1])) > budget:
        with pytest.raises(OvchatError, match="too long"):
            fit_to_context(head + flatten(turns), encode, context_length, max_new_tokens)
        return
    fitted = fit_to_context(head + flatten(turns), encode, context_length, max_new_tokens)
    trimmed = fitted.trimmed_turns
    assert 0 <= trimmed < len(turns)
    # A suffix of whole turns, behind the system prompt and ending in the new message.
    assert fitted.messages == head + flatten(turns[trimmed:])
    assert fitted.messages[: len(head)] == head
    assert fitted.messages[-1] is turns[-1][0]
    assert fitted.token_ids == encode(fitted.messages)
    assert len(fitted.token_ids) <= budget
    # Maximal: keeping one more old turn would not fit.
    if trimmed:
        assert len(encode(head + flatten(turns[trimmed - 1 :]))) > budget


@settings(max_examples=100)
@given(chats(["w"]), st.integers(1, 150), st.integers(-10, 150))
def test_fit_to_context_properties(chat: tuple[list[Message], list[list[Message]]], max_new: int, budget: int) -> None:
    head, turns = chat
    check_fit(head, turns, fake_encode, budget + max_new, max_new)


@pytest.fixture(scope="module")
def module_tokenizer(tiny_checkpoint: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@settings(max_examples=40, deadline=None)
@given(chat=chats(["fox", "数学", "😀", "def", " ", "\n"]), max_new=st.integers(1, 64), budget=st.integers(1, 400))
def test_fit_to_context_properties_with_the_real_tokenizer(
    module_tokenizer: Any, chat: tuple[list[Message], list[list[Message]]], max_new: int, budget: int
) -> None:
    head, turns = chat
    check_fit(head, turns, real_encoder(module_tokenizer), budget + max_new, max_new)
