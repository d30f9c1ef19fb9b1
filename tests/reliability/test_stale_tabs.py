"""Two tabs on one chat (two page sessions on one data folder, as two browser tabs are): a tab acting on an
older view of the chat never overwrites or erases what the other tab wrote since. It gets a message, nothing
is changed, and it shows the newer chat; what it typed is given back, not dropped.

The engine is the page tests' FakeEngine (the store and the page are under test here); the same cases with
a real model, a real browser and a page server restarted under a tab are in test_faults.py.
"""

from __future__ import annotations

from test_page import button, fake_engine, fresh_streamlit_caches, one_script_cache, open_page, send, shown

from ovchat.chats.store import ConversationStore
from ovchat.i18n import translate

__all__ = ["fake_engine", "fresh_streamlit_caches", "one_script_cache"]  # the page tests' fixtures, used here

CHANGED = translate("en", "chat.changed_elsewhere")


def two_tabs_on_one_chat():
    """Tab A starts a chat with one turn; tab B opens the same chat (the same URL)."""
    first = open_page()
    send(first, "first question")
    chat = first.query_params["chat"]
    second = open_page({"chat": chat})
    assert shown(second) == shown(first)
    return first, second, int(chat)


def history(chat: int) -> list[tuple[str, str]]:
    return [(message.role, message.content) for message in ConversationStore().get(chat).messages]


def warnings_of(app) -> list[str]:
    return [warning.value for warning in app.warning]


def test_regenerate_on_an_older_view_keeps_the_newer_turns(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    send(second, "second question")  # B's turn, which A has not shown
    newer = history(chat)
    assert len(newer) == 4
    button(first, "🔄 Regenerate").click().run()  # would drop "the last reply", which is now B's
    assert history(chat) == newer, "a stale tab's regenerate erased another tab's turn"
    assert CHANGED in warnings_of(first)
    assert [text for _, text in shown(first)] == [text for _, text in newer]  # A now shows B's turn
    button(first, "🔄 Regenerate").click().run()  # on the view it now shows, it works
    assert not first.exception
    assert history(chat)[:3] == newer[:3] and len(history(chat)) == 4


def test_an_edit_on_an_older_view_is_refused_and_given_back(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    button(first, "✏️ Edit").click().run()
    send(second, "second question")
    newer = history(chat)
    first.text_area(key="edit_text").set_value("my better first question")
    next(b for b in first.button if b.label == "Send").click().run()
    assert history(chat) == newer
    notice = " ".join(warnings_of(first))
    assert CHANGED in notice and "my better first question" in notice  # the edit's text is not lost


def test_a_prompt_typed_on_an_older_view_goes_back_into_the_input(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    send(second, "second question")
    newer = history(chat)
    first.chat_input[0].set_value("typed on the old view").run()
    assert history(chat) == newer
    assert CHANGED in warnings_of(first)
    assert first.chat_input[0].value == "typed on the old view", "the unsent prompt was dropped"
    send(first, "typed on the old view")  # sent again on the newer view, it goes after B's turn
    assert history(chat)[:4] == newer and history(chat)[4] == ("user", "typed on the old view")


def test_delete_on_an_older_view_is_refused(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    button(first, "🗑 Delete chat").click().run()
    send(second, "second question")
    button(first, "Delete").click().run()
    assert len(history(chat)) == 4, "a stale tab deleted a chat with turns it had not shown"
    assert CHANGED in warnings_of(first)


def test_a_system_prompt_changed_elsewhere_is_shown_not_overwritten(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    second.text_area(key=f"system_{chat}").set_value("Answer in French.").run()
    assert ConversationStore().get(chat).system_prompt == "Answer in French."
    first.text_area(key=f"system_{chat}").set_value("Answer in German.").run()  # typed on the old view
    assert ConversationStore().get(chat).system_prompt == "Answer in French."
    assert CHANGED in warnings_of(first)
    assert first.text_area(key=f"system_{chat}").value == "Answer in French."  # A reloaded the chat's
    first.text_area(key=f"system_{chat}").set_value("Answer in German.").run()  # now on the newer view
    assert ConversationStore().get(chat).system_prompt == "Answer in German."
    second.run()  # any rerun of B shows A's change, and says so
    assert second.text_area(key=f"system_{chat}").value == "Answer in German."
    assert CHANGED in warnings_of(second)


def test_a_tab_whose_chat_was_deleted_keeps_what_it_sends_in_a_new_chat(fake_engine) -> None:
    first, second, chat = two_tabs_on_one_chat()
    button(second, "🗑 Delete chat").click().run()
    button(second, "Delete").click().run()
    first.chat_input[0].set_value("still there?").run()
    assert not first.exception
    gone = translate("en", "chat.chat_gone", id=chat)
    assert gone in warnings_of(first)
    [kept] = ConversationStore().list()
    assert kept.id != chat and history(kept.id)[0] == ("user", "still there?")


def test_one_tab_alone_is_never_told_its_chat_changed(fake_engine) -> None:
    """Its own writes (a prompt, a streamed reply saved as it grows, a regenerate, a rename) are counted."""
    app = open_page()
    send(app, "one")
    send(app, "two")
    button(app, "🔄 Regenerate").click().run()
    app.sidebar.text_input(key=f"title_{app.query_params['chat']}").set_value("Renamed").run()
    send(app, "three")
    assert warnings_of(app) == [] and not app.exception
    assert [text for _, text in shown(app)][-2:] == ["three", "You said: three"]
