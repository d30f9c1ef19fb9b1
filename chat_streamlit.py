"""ovchat's chat page: `streamlit run chat_streamlit.py` (or `./run.sh`).

UI only. Loading, exporting, generating and saving live in the ovchat package. The open
chat's id is in the URL (?chat=ID) and every chat is in SQLite, so a reload keeps it.
One engine per model and device is shared by all tabs (st.cache_resource); with the default
continuous-batching loop the replies of several tabs advance together, each its own. The package's layout is in
docs/architecture.md.

Every text the page shows is in English and Simplified Chinese: `t(key)` looks it up in ovchat.i18n's
catalog (ovchat/i18n/chat.py) in the language picked at the top of the sidebar, which is remembered in
$OVCHAT_HOME/page.json; `?lang=zh-CN` opens the page in Chinese. Streamlit's own texts (the file
uploader's "Drag and drop file here" and "Browse files", the chat input's send button, its menu) are
Streamlit's, in English, and not translated here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import streamlit as st

import lab_streamlit as lab

# t(key): a text of the catalog in the page's language, the language being st.session_state[LANGUAGE_KEY].
from lab_streamlit import LANGUAGE_KEY, t
from ovchat.chats import (
    ChatChanged,
    ConversationStore,
    chat_file_name,
    chat_to_dict,
    chat_to_markdown,
    describe_reply,
    parse_chat,
    stream_into_store,
)
from ovchat.chats.store import STORE_FILE, title_from
from ovchat.engine import (
    DEFAULT_BACKEND,
    OPTIMUM_BACKEND,
    Engine,
    StreamingEngine,
    available_devices,
    installed_backends,
)
from ovchat.engine.remote import API_KEY_ENV, ENDPOINT_ENV, RemoteEngine
from ovchat.errors import OvchatError
from ovchat.export import default_model_folder, ensure_default_model, export_model
from ovchat.extras import INSTALL_EXPORT_EXTRA
from ovchat.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    initial_language,
    language_from_locale,
    remember_language,
)
from ovchat.lab import presets
from ovchat.model_folder import export_summary, is_complete
from ovchat.paths import data_home, models_dir
from ovchat.settings import GenerationSettings

MODEL_ENV = "OVCHAT_MODEL"  # an IR folder to open first instead of the default model
# The model picker's option for typing a folder: a value only, shown as t("chat.other_folder").
OTHER_FOLDER = "Other folder..."
LANGUAGE_PARAM = "lang"  # ?lang=zh-CN opens the page in that language (and remembers it)
PRESET_SLIDERS = ("temperature", "top_p", "top_k", "repetition_penalty")  # the sliders a preset sets (by key)
LOCAL, REMOTE = "local", "remote"  # where the model runs: an exported folder here, or an OpenAI-compatible server
# The catalog keys of the export's steps; anything else is shown as is.
STEP_KEYS = {
    "load": "chat.step.load",
    "convert": "chat.step.convert",
    "compress": "chat.step.compress",
    "save": "chat.step.save",
    "check": "chat.step.check",
}
REPLY_SAVE_WAIT_S = 10.0  # stopping a reply takes one token and one write; this is a generous bound
# Chat id -> the chat's revision as this tab last showed it, plus the changes this tab made since. A change
# made on an older revision (the chat changed in another tab or window) is refused by the store.
REVISIONS_KEY = "revisions"
UNKNOWN_REVISION = -1  # a chat this tab has not shown: any conditional change to it is refused
NOTICE_KEY = "chat_notice"  # a message for the next run, from a callback (callbacks run before the script)
SIDEBAR_NOTICE_KEY = "sidebar_notice"  # the same, shown in the sidebar (a rename)
RESTORE_PROMPT_KEY = "restore_prompt"  # a prompt that could not be sent, put back into the chat input

st.set_page_config(page_title="ovchat", page_icon="💬")  # the first Streamlit call; "ovchat" is a name


# ----- the page's language -----


def browser_locale() -> str | None:
    """The browser's navigator.language, where Streamlit passes it on (1.67 does; a client may not)."""
    try:
        return getattr(st.context, "locale", None)
    except Exception:  # an older Streamlit or a session without a browser: no locale
        return None


def choose_language() -> None:
    """?lang= if given (and remembered), else this session's pick, else the remembered one, else the browser's."""
    asked = st.query_params.get(LANGUAGE_PARAM)
    if asked is not None:
        language = language_from_locale(asked)  # "zh-CN", "zh" or "zh_CN"; anything else is English
        if st.session_state.get(LANGUAGE_KEY) != language:
            st.session_state[LANGUAGE_KEY] = language  # before the picker is drawn, so the picker shows it
            remember_language(language)
    elif LANGUAGE_KEY not in st.session_state:
        st.session_state[LANGUAGE_KEY] = initial_language(browser_locale())


def language_picked() -> None:
    language = st.session_state[LANGUAGE_KEY]
    remember_language(language)
    if LANGUAGE_PARAM in st.query_params:  # keep the URL's ?lang= in step, or it would switch the page back
        st.query_params[LANGUAGE_PARAM] = language


def language_picker() -> None:
    st.selectbox(
        t("chat.language"),
        list(LANGUAGES),
        format_func=LANGUAGES.__getitem__,
        key=LANGUAGE_KEY,
        on_change=language_picked,
    )


# The spinner is the page's (translated), around the call in main().
@st.cache_resource(show_spinner=False)
def shared_engine(path: str, device: str, backend: str) -> Engine:
    """One engine per model, device and backend, shared by every browser tab."""
    return Engine.load(path, device=device, backend=backend)


@st.cache_resource
def device_names() -> list[str]:
    return [name for name, _ in available_devices()] + ["AUTO"]


@st.cache_resource
def open_store(path: str) -> ConversationStore:
    return ConversationStore(Path(path))


def store() -> ConversationStore:
    return open_store(str(data_home() / STORE_FILE))  # one store per data folder


# ----- the open chat: its id lives in the URL so that a reload keeps it -----


def current_chat() -> int | None:
    value = st.query_params.get("chat")
    if value is None or not value.isdigit():
        return None
    ids = {info.id for info in store().list()}
    if int(value) in ids:
        return int(value)
    if revisions().pop(int(value), None) is not None:  # this tab showed it: say where it went
        st.session_state[NOTICE_KEY] = t("chat.chat_gone", id=value)
    open_chat(None)
    return None


def open_chat(conversation_id: int | None) -> None:
    if conversation_id is None:
        st.query_params.pop("chat", None)
    else:
        st.query_params["chat"] = str(conversation_id)
    st.session_state.pop("editing", None)


def revisions() -> dict[int, int]:
    return st.session_state.setdefault(REVISIONS_KEY, {})


def count_own_change(chat_id: int) -> None:
    """One change this tab made to the chat (each store write is one revision)."""
    if chat_id in revisions():
        revisions()[chat_id] += 1


def change_chat(chat_id: int, write: Callable[[int], object], notice_key: str = NOTICE_KEY) -> bool:
    """Run one write to the chat on condition that the chat is still as this tab showed it; whether it ran.

    A refused or failed write changes nothing and leaves a message under ``notice_key`` for the page to show
    (callbacks run before the script draws anything)."""
    try:
        write(revisions().get(chat_id, UNKNOWN_REVISION))
    except ChatChanged:
        st.session_state[notice_key] = t("chat.changed_elsewhere")
        return False
    except OvchatError as error:  # deleted elsewhere, a full disk, a read-only data folder, an empty title
        st.session_state[notice_key] = t("chat.save_failed", detail=str(error))
        return False
    count_own_change(chat_id)
    return True


def follow_changes_elsewhere(chat_id: int | None) -> bool:
    """Whether the chat changed in another tab or window since this tab showed it; if so, this tab's inputs
    for it (a title, a system prompt, an edit being typed) are dropped, so the page shows the newer chat."""
    if chat_id is None:
        return False
    current = store().get(chat_id).info.revision
    shown = revisions().get(chat_id)
    revisions()[chat_id] = current
    if shown is None or shown == current:
        return False
    for key in (f"title_{chat_id}", f"system_{chat_id}", "editing", "edit_text", "confirm_delete"):
        st.session_state.pop(key, None)
    st.session_state.setdefault(NOTICE_KEY, t("chat.changed_elsewhere"))  # a callback's may say more
    return True


# ----- sidebar -----


def chats_sidebar(chat_id: int | None) -> None:
    st.header(t("chat.chats"))
    st.button(t("chat.new_chat"), use_container_width=True, on_click=open_chat, args=(None,))
    chats = store().list()
    if chats:
        titles = {info.id: info.title for info in chats}
        st.radio(
            t("chat.saved_chats"),
            list(titles),
            index=list(titles).index(chat_id) if chat_id in titles else None,
            format_func=lambda cid: titles[cid],
            key=f"chat_list_{chat_id}",
            label_visibility="collapsed",
            on_change=lambda: open_chat(st.session_state[f"chat_list_{chat_id}"]),
        )
    if chat_id is not None:
        manage_chat(chat_id)
    if SIDEBAR_NOTICE_KEY in st.session_state:  # from a callback, which runs before this script
        st.error(st.session_state.pop(SIDEBAR_NOTICE_KEY))
    import_chat()


def manage_chat(chat_id: int) -> None:
    messages, title = store().export_chat(chat_id)
    with st.expander(t("chat.this_chat")):
        st.text_input(
            t("chat.title"),
            value=title,
            key=f"title_{chat_id}",
            on_change=lambda: rename_chat(chat_id, st.session_state[f"title_{chat_id}"]),
        )
        document = json.dumps(chat_to_dict(messages, title), ensure_ascii=False, indent=2)
        st.download_button(
            t("chat.download_json"), document, chat_file_name(title), "application/json", use_container_width=True
        )
        markdown = chat_to_markdown(messages, title)
        st.download_button(
            t("chat.download_markdown"),
            markdown,
            chat_file_name(title, ".md"),
            "text/markdown",
            use_container_width=True,
        )
        if st.session_state.get("confirm_delete") == chat_id:
            st.warning(t("chat.confirm_delete"))
            left, right = st.columns(2)
            left.button(t("chat.delete"), type="primary", on_click=delete_chat, args=(chat_id,))
            right.button(t("chat.keep"), on_click=st.session_state.pop, args=("confirm_delete", None))
        else:
            st.button(t("chat.delete_chat"), on_click=st.session_state.__setitem__, args=("confirm_delete", chat_id))


def rename_chat(chat_id: int, title: str) -> None:
    rename = lambda revision: store().rename(chat_id, title, expected_revision=revision)  # noqa: E731
    change_chat(chat_id, rename, notice_key=SIDEBAR_NOTICE_KEY)  # shown next to the title box


def delete_chat(chat_id: int) -> None:
    st.session_state.pop("confirm_delete", None)
    if change_chat(chat_id, lambda revision: store().delete(chat_id, expected_revision=revision)):
        open_chat(None)


def import_chat() -> None:
    """Import a chat file; a malformed one gets a message and changes nothing."""
    round_ = st.session_state.setdefault("import_round", 0)
    # The label is ours; "Drag and drop file here", "Browse files" and the size limit are Streamlit's own.
    uploaded = st.file_uploader(t("chat.import"), type=["json"], key=f"import_{round_}")
    if uploaded is None:
        return
    try:
        messages, title = parse_chat(uploaded.getvalue().decode("utf-8", errors="replace"), origin=uploaded.name)
        new_id = store().import_chat(messages, title)
    except OvchatError as error:
        st.error(t("chat.import_failed", detail=str(error)))
        return
    st.session_state.import_round = round_ + 1  # a fresh uploader, so the file is imported once
    open_chat(new_id)
    st.rerun()


@st.cache_resource(show_spinner=False)
def remote_engine(url: str, api_key: str, model: str) -> RemoteEngine:
    """One connection per server, key and model, shared by every tab (the key stays in this process's memory)."""
    return RemoteEngine.connect(url, model or None, api_key or None)


def model_source() -> str:
    labels = {LOCAL: t("chat.source_local"), REMOTE: t("chat.source_remote")}
    # A page started with OVCHAT_ENDPOINT set opens on that server, as the terminal's commands do.
    first = 1 if os.environ.get(ENDPOINT_ENV) else 0
    return st.radio(
        t("chat.source"), (LOCAL, REMOTE), index=first, format_func=labels.__getitem__, horizontal=True, key="source"
    )


def remote_sidebar() -> tuple[RemoteEngine | None, str | None]:
    """The server picked in the sidebar, or the one-line reason there is none. The key is a password field: it
    is kept in this session only, never in the URL, a saved chat or a log."""
    url = st.text_input(
        t("chat.remote_url"), os.environ.get(ENDPOINT_ENV, ""), placeholder=t("chat.remote_url_placeholder"),
        help=t("chat.remote_url_help"), key="remote_url",
    )  # fmt: skip
    api_key = st.text_input(
        t("chat.remote_key"), os.environ.get(API_KEY_ENV, ""), type="password", help=t("chat.remote_key_help"),
        key="remote_key",
    )  # fmt: skip
    if not url.strip():
        return None, None
    try:
        with st.spinner(t("chat.remote_connecting")):
            server = remote_engine(url.strip(), api_key, "")
        if server.models:
            model = st.selectbox(t("chat.remote_model"), server.models, key="remote_model")
        else:  # a server that lists no models still serves the one it is asked for
            model = st.text_input(t("chat.remote_model_typed"), key="remote_model_typed").strip()
            if not model:
                return None, t("chat.remote_no_models")
        return (server if model == server.model else remote_engine(url.strip(), api_key, model)), None
    except OvchatError as error:
        return None, str(error)


def model_sidebar() -> tuple[Path | None, str, str]:
    # Not a hidden name: an export in progress stages there, and a replaced export is kept there until it ends.
    folders = sorted(str(path) for path in models_dir().glob("[!.]*") if is_complete(path))
    default = str(default_model_folder())
    configured = os.environ.get(MODEL_ENV)
    # Open the configured model, else the default one if exported (or if nothing is: the first
    # run exports it), else the first exported one rather than start a minute-long export.
    preferred = configured or (default if default in folders or not folders else folders[0])
    for offered in (preferred, default):  # the default is offered even before its export
        if offered not in folders:
            folders.append(offered)
    options = [*folders, OTHER_FOLDER]
    choice = st.selectbox(
        t("chat.exported_model"),
        options,
        index=options.index(preferred) if preferred in options else 0,
        # Labels made now, in this run's language (a format_func may also be called outside the run).
        format_func={
            value: t("chat.other_folder") if value == OTHER_FOLDER else Path(value).name for value in options
        }.__getitem__,
        help=t("chat.exported_model_help", folder=models_dir()),
        key="model",  # keyed widgets keep their value when the language, and so the label, changes
    )
    if choice == OTHER_FOLDER:
        typed = st.text_input(t("chat.folder"), placeholder=t("chat.folder_placeholder"), key="other_folder")
        folder = Path(typed).expanduser() if typed.strip() else None
    else:
        folder = Path(choice)
    # How the weights were made, under the picker rather than in its options: the labels must not change
    # when the first run's export writes the manifest, or the widget would lose the selection.
    summary = export_summary(folder) if folder is not None else None
    if summary:
        st.caption(summary)
    device = st.selectbox(t("chat.device"), device_names(), help=t("chat.device_help"), key="device")
    backends = installed_backends()
    if OPTIMUM_BACKEND in backends:
        backend_help = t("chat.backend_help")
    else:
        backend_help = t("chat.backend_help_needs_extra", command=INSTALL_EXPORT_EXTRA)
    backend = st.selectbox(
        t("chat.backend"), backends, index=backends.index(DEFAULT_BACKEND), help=backend_help, key="backend"
    )
    return folder, device, backend


def sampling_sidebar(context_length: int) -> GenerationSettings:
    st.header(t("chat.sampling"))
    # Every setting has a key, so that it keeps its value when the language (its label) changes; the
    # preset picker sets the four it names through those keys, so their defaults are set here, not passed.
    defaults = GenerationSettings()
    for field in PRESET_SLIDERS:
        st.session_state.setdefault(field, getattr(defaults, field))
    lab.preset_picker({field: field for field in PRESET_SLIDERS})
    ranges = presets.PRESET_RANGES  # a preset outside them would break its slider, so presets are held to them
    temperature = st.slider(
        t("chat.temperature"), *ranges["temperature"], step=0.05, help=t("chat.temperature_help"), key="temperature"
    )
    top_p = st.slider(t("chat.top_p"), *ranges["top_p"], step=0.05, help=t("chat.top_p_help"), key="top_p")
    top_k = st.slider(t("chat.top_k"), *map(int, ranges["top_k"]), step=1, help=t("chat.top_k_help"), key="top_k")
    # The reply must fit the context together with the prompt, so the slider stops at half of it.
    longest = max(16, min(4096, context_length // 2) // 16 * 16)
    max_new_tokens = st.slider(
        t("chat.max_new_tokens"),
        16,
        longest,
        min(512, longest),
        16,
        help=t("chat.max_new_tokens_help"),
        key="max_new_tokens",
    )
    with st.expander(t("chat.advanced")):
        repetition_penalty = st.slider(
            t("chat.repetition_penalty"),
            *ranges["repetition_penalty"],
            step=0.05,
            help=t("chat.repetition_penalty_help"),
            key="repetition_penalty",
        )
        seed_text = st.text_input(t("chat.seed"), help=t("chat.seed_help"), key="seed")
        stop_text = st.text_area(t("chat.stop_strings"), help=t("chat.stop_strings_help"), key="stop_strings")
    logprobs = lab.probabilities_toggle()
    seed = int(seed_text) if seed_text.strip().isdigit() else None
    if seed_text.strip() and seed is None:
        st.sidebar.warning(t("chat.seed_invalid"))
    try:
        settings = GenerationSettings(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=tuple(line for line in stop_text.splitlines() if line),
            logprobs=logprobs,
        )
    except OvchatError as error:
        st.sidebar.warning(t("chat.settings_invalid", detail=str(error)))
        return GenerationSettings(logprobs=logprobs)
    lab.save_preset_form(settings)
    return settings


def save_system_prompt(chat_id: int | None) -> None:
    text = st.session_state[f"system_{chat_id}"]
    if chat_id is None:
        st.session_state.new_system = text
    else:
        change_chat(chat_id, lambda revision: store().set_system_prompt(chat_id, text, expected_revision=revision))


def system_prompt_sidebar(chat_id: int | None) -> str:
    """The open chat's system prompt; a new chat keeps it until its first message creates the chat. Saved when
    the user changes it here (a callback), never merely because this tab shows an older text."""
    saved = store().get(chat_id).system_prompt if chat_id is not None else st.session_state.get("new_system", "")
    with st.sidebar.expander(t("chat.system_prompt"), expanded=bool(saved)):
        return st.text_area(
            t("chat.system_prompt"),
            value=saved,
            key=f"system_{chat_id}",
            label_visibility="collapsed",
            placeholder=t("chat.system_prompt_placeholder"),
            help=t("chat.system_prompt_help"),
            on_change=save_system_prompt,
            args=(chat_id,),
        )


# ----- the chat -----


def first_run_export(folder: Path) -> None:
    """Export the default model here, with its progress visible (the first run, or after it was deleted)."""
    with st.status(t("chat.first_run"), expanded=True) as status:

        def progress(step: str, event: str, seconds: float | None) -> None:
            if event == "done":
                name = t(STEP_KEYS[step]) if step in STEP_KEYS else step
                st.write(t("chat.step_done", step=name, seconds=seconds))

        export_model(None, folder, progress=progress)
        status.update(label=t("chat.first_run_done"), state="complete")


def show_history(chat_id: int | None) -> None:
    if chat_id is None:
        return
    for message in store().get(chat_id).messages:
        with st.chat_message(message.role):
            shaded = st.session_state.get("show_probabilities") and lab.shaded_reply(message.meta)
            if not shaded:
                # Markdown, never HTML: model output is not trusted.
                st.markdown(message.content if message.content else t("chat.no_text"))
            if message.role == "assistant":
                st.caption(reply_line(message.meta))


def reply_line(meta: dict) -> str:
    """The line under a reply, in the page's language."""
    return describe_reply(meta, st.session_state.get(LANGUAGE_KEY, DEFAULT_LANGUAGE))


def regenerate(chat_id: int) -> None:
    messages = store().get(chat_id).messages
    if messages and messages[-1].role == "assistant":
        cut = len(messages) - 1
        if not change_chat(chat_id, lambda revision: store().truncate(chat_id, cut, expected_revision=revision)):
            return
    st.session_state.generate = True


def resend_edit(chat_id: int) -> None:
    text = st.session_state.get("edit_text", "").strip()
    messages = store().get(chat_id).messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    st.session_state.pop("editing", None)
    if not text or last_user is None:
        return
    cut = lambda revision: store().truncate(chat_id, last_user, expected_revision=revision)  # noqa: E731
    add = lambda revision: store().add_message(chat_id, "user", text, expected_revision=revision)  # noqa: E731
    if change_chat(chat_id, cut) and change_chat(chat_id, add):
        st.session_state.generate = True
    else:  # refused, or the store failed: the edit's text is shown, not lost
        st.session_state[NOTICE_KEY] += " " + t("chat.edit_kept", text=text)


def chat_actions(chat_id: int) -> None:
    """Regenerate and edit, under the last turn."""
    messages = store().get(chat_id).messages
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if last_user is None:
        return
    if st.session_state.get("editing"):
        with st.form("edit"):
            st.text_area(t("chat.edit_last"), value=last_user.content, key="edit_text")
            left, right = st.columns(2)
            left.form_submit_button(t("chat.send"), type="primary", on_click=resend_edit, args=(chat_id,))
            right.form_submit_button(t("chat.cancel"), on_click=st.session_state.pop, args=("editing", None))
        return
    left, right, _ = st.columns([1, 1, 2])
    left.button(t("chat.regenerate"), on_click=regenerate, args=(chat_id,), use_container_width=True)
    right.button(
        t("chat.edit"), on_click=st.session_state.__setitem__, args=("editing", True), use_container_width=True
    )


def show_streaming_reply(engine: StreamingEngine, chat_id: int, settings: GenerationSettings) -> None:
    saved = threading.Event()
    st.session_state.reply_saved = saved
    with st.chat_message("assistant"):
        # Any click, this one included, interrupts the running script; stream_into_store then
        # stops the engine and keeps the partial reply, marked stopped.
        st.button(t("chat.stop"), key="stop")
        pieces = stream_into_store(engine, store(), chat_id, settings, on_saved=lambda: count_own_change(chat_id))
        try:
            st.write_stream(pieces)
        except OvchatError as error:  # what was written stays on screen, and is saved unless the store failed
            st.error(t("chat.reply_failed", detail=str(error)))
            return
        finally:
            pieces.close()
            saved.set()
    st.rerun()  # show the reply from the store, with its metrics and the actions under it


def wait_for_the_last_reply() -> None:
    """With fast reruns, the run a Stop click starts can begin before the interrupted run has
    saved the partial reply; wait for that save, so the page shows the reply as stopped."""
    saved = st.session_state.get("reply_saved")
    if saved is not None:
        saved.wait(timeout=REPLY_SAVE_WAIT_S)


def send_prompt(chat_id: int | None, prompt: str) -> int | None:
    """Save the typed prompt as the chat's next message (a new chat for the first); the chat's id, or None
    if it could not be saved, in which case the prompt goes back into the chat input and the page says why."""
    try:
        if chat_id is None:
            chat_id = store().create(title_from(prompt), st.session_state.pop("new_system", ""))
            revisions()[chat_id] = 0
            open_chat(chat_id)
        store().add_message(chat_id, "user", prompt, expected_revision=revisions().get(chat_id, UNKNOWN_REVISION))
    except ChatChanged:
        st.session_state[NOTICE_KEY] = t("chat.changed_elsewhere")
    except OvchatError as error:
        st.session_state[NOTICE_KEY] = t("chat.save_failed", detail=str(error))
    else:
        count_own_change(chat_id)
        return chat_id
    st.session_state[RESTORE_PROMPT_KEY] = prompt
    st.rerun()  # the chat input can only be given its text back before it is drawn
    return None


def main() -> None:
    draw_page()
    st.session_state.pop(NOTICE_KEY, None)  # not reached when the run ends in a rerun: then the next one shows it


def draw_page() -> None:
    wait_for_the_last_reply()
    choose_language()
    if RESTORE_PROMPT_KEY in st.session_state:
        st.session_state["prompt"] = st.session_state.pop(RESTORE_PROMPT_KEY)
    try:
        store()
    except OvchatError as error:  # a data folder that cannot be created or read: nothing else can work
        st.error(t("chat.store_failed", detail=str(error)))
        st.stop()
    chat_id = current_chat()
    changed_elsewhere = follow_changes_elsewhere(chat_id)
    with st.sidebar:
        language_picker()
        view = lab.view_picker()
        chats_sidebar(chat_id)
        st.header(t("chat.model"))
        source = model_source()
        if source == REMOTE:
            server, problem = remote_sidebar()
        else:
            folder, device, backend = model_sidebar()
    # Pinned to the bottom wherever it is called; its send button is Streamlit's own. The lab's views have none.
    prompt = st.chat_input(t("chat.ask"), key="prompt") if view == lab.CHAT_VIEW else None
    st.title(t("chat.page_title"))
    if NOTICE_KEY in st.session_state:  # kept through reruns (a reply's end), dropped when a run completes
        st.warning(st.session_state[NOTICE_KEY])
    engine: StreamingEngine
    if source == REMOTE:
        if server is None:
            if problem:
                st.error(t("chat.remote_failed", detail=problem))
            else:
                st.info(t("chat.remote_no_url"))
            show_history(chat_id)
            return
        engine = server
        model_line = t("chat.remote_line", model=server.model, url=server.url, context=server.context_length)
    else:
        if folder is None:
            st.info(t("chat.no_folder"))
            show_history(chat_id)
            return
        try:
            if not os.environ.get(MODEL_ENV) and folder == default_model_folder():
                ensure_default_model(first_run_export)
            with st.spinner(t("chat.loading")):  # shown only if loading takes more than half a second
                engine = shared_engine(str(folder), device, backend)
        except OvchatError as error:
            st.error(t("chat.load_failed", detail=str(error)))
            st.info(t("chat.load_failed_hint"))
            show_history(chat_id)
            return
        model_line = t("chat.model_line", folder=folder.name, device=engine.device, context=engine.context_length)
    with st.sidebar:
        settings = sampling_sidebar(engine.context_length)
    system_prompt_sidebar(chat_id)
    st.caption(model_line)
    if source == REMOTE and server is not None and server.ignored:
        st.caption(t("chat.remote_ignored", names=", ".join(sorted(server.ignored))))
    if view != lab.CHAT_VIEW:
        lab.draw_view(view, engine, store().get(chat_id).chat_messages() if chat_id is not None else [], settings)
        return

    if prompt:
        if changed_elsewhere:  # typed on the older chat: shown again with the newer chat, not sent
            st.session_state[RESTORE_PROMPT_KEY] = prompt
            st.rerun()
        chat_id = send_prompt(chat_id, prompt)
        st.session_state.generate = True
    show_history(chat_id)
    if chat_id is not None and st.session_state.pop("generate", False):
        show_streaming_reply(engine, chat_id, settings)
    elif chat_id is not None:
        chat_actions(chat_id)


main()
