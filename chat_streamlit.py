"""ovchat's chat page: `streamlit run chat_streamlit.py` (or `./run.sh`).

UI only. Loading, exporting, generating and saving live in the ovchat package. The open
chat's id is in the URL (?chat=ID) and every chat is in SQLite, so a reload keeps it.
One engine per model and device is shared by all tabs (st.cache_resource); with the default
continuous-batching loop the replies of several tabs advance together, each its own. The package's layout is in
docs/architecture.md.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import streamlit as st

from ovchat.chats import (
    ConversationStore,
    chat_to_dict,
    chat_to_markdown,
    describe_reply,
    parse_chat,
    stream_into_store,
)
from ovchat.chats.store import STORE_FILE, title_from
from ovchat.engine import DEFAULT_BACKEND, OPTIMUM_BACKEND, Engine, available_devices, installed_backends
from ovchat.errors import OvchatError
from ovchat.export import default_model_folder, ensure_default_model, export_model
from ovchat.extras import INSTALL_EXPORT_EXTRA
from ovchat.model_folder import export_summary, is_complete
from ovchat.paths import data_home, models_dir
from ovchat.settings import GenerationSettings

MODEL_ENV = "OVCHAT_MODEL"  # an IR folder to open first instead of the default model
OTHER_FOLDER = "Other folder..."
REPLY_SAVE_WAIT_S = 10.0  # stopping a reply takes one token and one write; this is a generous bound

st.set_page_config(page_title="ovchat", page_icon="💬")


@st.cache_resource(show_spinner="Loading the model...")
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
    return int(value) if int(value) in ids else None


def open_chat(conversation_id: int | None) -> None:
    if conversation_id is None:
        st.query_params.pop("chat", None)
    else:
        st.query_params["chat"] = str(conversation_id)
    st.session_state.pop("editing", None)


# ----- sidebar -----


def chats_sidebar(chat_id: int | None) -> None:
    st.header("Chats")
    st.button("➕ New chat", use_container_width=True, on_click=open_chat, args=(None,))
    chats = store().list()
    if chats:
        titles = {info.id: info.title for info in chats}
        st.radio(
            "Saved chats",
            list(titles),
            index=list(titles).index(chat_id) if chat_id in titles else None,
            format_func=lambda cid: titles[cid],
            key=f"chat_list_{chat_id}",
            label_visibility="collapsed",
            on_change=lambda: open_chat(st.session_state[f"chat_list_{chat_id}"]),
        )
    if chat_id is not None:
        manage_chat(chat_id)
    if "sidebar_error" in st.session_state:  # from a callback, which runs before this script
        st.error(st.session_state.pop("sidebar_error"))
    import_chat()


def manage_chat(chat_id: int) -> None:
    messages, title = store().export_chat(chat_id)
    with st.expander("This chat"):
        st.text_input(
            "Title",
            value=title,
            key=f"title_{chat_id}",
            on_change=lambda: rename_chat(chat_id, st.session_state[f"title_{chat_id}"]),
        )
        name = "".join(c if c.isalnum() else "-" for c in title).strip("-")[:40] or "chat"
        document = json.dumps(chat_to_dict(messages, title), ensure_ascii=False, indent=2)
        st.download_button("Download JSON", document, f"{name}.json", "application/json", use_container_width=True)
        markdown = chat_to_markdown(messages, title)
        st.download_button("Download Markdown", markdown, f"{name}.md", "text/markdown", use_container_width=True)
        if st.session_state.get("confirm_delete") == chat_id:
            st.warning("Delete this chat for good?")
            left, right = st.columns(2)
            left.button("Delete", type="primary", on_click=delete_chat, args=(chat_id,))
            right.button("Keep", on_click=st.session_state.pop, args=("confirm_delete", None))
        else:
            st.button("🗑 Delete chat", on_click=st.session_state.__setitem__, args=("confirm_delete", chat_id))


def rename_chat(chat_id: int, title: str) -> None:
    try:
        store().rename(chat_id, title)
    except OvchatError as error:
        st.session_state.sidebar_error = str(error)


def delete_chat(chat_id: int) -> None:
    store().delete(chat_id)
    st.session_state.pop("confirm_delete", None)
    open_chat(None)


def import_chat() -> None:
    """Import a chat file; a malformed one gets a message and changes nothing."""
    round_ = st.session_state.setdefault("import_round", 0)
    uploaded = st.file_uploader("Import a chat (JSON)", type=["json"], key=f"import_{round_}")
    if uploaded is None:
        return
    try:
        messages, title = parse_chat(uploaded.getvalue().decode("utf-8", errors="replace"), origin=uploaded.name)
        new_id = store().import_chat(messages, title)
    except OvchatError as error:
        st.error(str(error))
        return
    st.session_state.import_round = round_ + 1  # a fresh uploader, so the file is imported once
    open_chat(new_id)
    st.rerun()


def model_sidebar() -> tuple[Path | None, str, str]:
    st.header("Model")
    folders = sorted(str(path) for path in models_dir().glob("*") if is_complete(path))
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
        "Exported model",
        options,
        index=options.index(preferred) if preferred in options else 0,
        format_func=lambda value: value if value == OTHER_FOLDER else Path(value).name,
        help=f"IR folders under {models_dir()}; export more with export_ir.py.",
    )
    if choice == OTHER_FOLDER:
        typed = st.text_input("Folder", placeholder="/path/to/exported-model")
        folder = Path(typed).expanduser() if typed.strip() else None
    else:
        folder = Path(choice)
    # How the weights were made, under the picker rather than in its options: the labels must not change
    # when the first run's export writes the manifest, or the widget would lose the selection.
    summary = export_summary(folder) if folder is not None else None
    if summary:
        st.caption(summary)
    device = st.selectbox("Device", device_names(), help="The OpenVINO device that runs the model.")
    backends = installed_backends()
    backend = st.selectbox(
        "Generation loop",
        backends,
        index=backends.index(DEFAULT_BACKEND),
        help="batched: openvino-genai's continuous batching, so several tabs get replies at once; "
        "genai: its LLMPipeline, one reply at a time; optimum: optimum-intel's OVModelForCausalLM.generate"
        + ("." if OPTIMUM_BACKEND in backends else f" (needs the export extra: {INSTALL_EXPORT_EXTRA})."),
    )
    return folder, device, backend


def sampling_sidebar(context_length: int) -> GenerationSettings:
    st.header("Sampling")
    temperature = st.slider(
        "Temperature",
        0.0,
        2.0,
        0.7,
        0.05,
        help="How random the reply is. 0 always takes the likeliest token (same prompt, same reply); "
        "around 0.7 is natural; above 1 gets creative and then incoherent.",
    )
    top_p = st.slider(
        "Top-p",
        0.05,
        1.0,
        0.9,
        0.05,
        help="Sample only from the smallest set of likely tokens whose probabilities add up to p. "
        "Lower is safer and more focused; 1 turns it off.",
    )
    top_k = st.slider(
        "Top-k", 0, 200, 40, 1, help="Sample only from the k likeliest tokens. 0 turns it off; 20-50 suits chat."
    )
    # The reply must fit the context together with the prompt, so the slider stops at half of it.
    longest = max(16, min(4096, context_length // 2) // 16 * 16)
    max_new_tokens = st.slider(
        "Max new tokens",
        16,
        longest,
        min(512, longest),
        16,
        help="The longest reply, in tokens (a token is about 3/4 of an English word). "
        "Older turns are left out when the chat and the reply would not fit the model's context.",
    )
    with st.expander("Advanced"):
        repetition_penalty = st.slider(
            "Repetition penalty",
            1.0,
            2.0,
            1.1,
            0.05,
            help="Above 1 makes tokens already in the chat less likely; it stops small models looping.",
        )
        seed_text = st.text_input("Seed", help="A number makes sampling repeatable; empty is random each time.")
        stop_text = st.text_area("Stop strings", help="One per line; the reply ends before any of them.")
    seed = int(seed_text) if seed_text.strip().isdigit() else None
    if seed_text.strip() and seed is None:
        st.sidebar.warning("The seed must be a whole number; using a random one.")
    try:
        return GenerationSettings(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=tuple(line for line in stop_text.splitlines() if line),
        )
    except OvchatError as error:
        st.sidebar.warning(f"{error}; using the defaults.")
        return GenerationSettings()


def system_prompt_sidebar(chat_id: int | None) -> str:
    """The open chat's system prompt; a new chat keeps it until its first message creates the chat."""
    saved = store().get(chat_id).system_prompt if chat_id is not None else st.session_state.get("new_system", "")
    with st.sidebar.expander("System prompt", expanded=bool(saved)):
        text = st.text_area(
            "System prompt",
            value=saved,
            key=f"system_{chat_id}",
            label_visibility="collapsed",
            placeholder="For example: You are a concise assistant.",
            help="Instructions the model sees before the chat; saved with this chat.",
        )
    if text != saved:
        if chat_id is None:
            st.session_state.new_system = text
        else:
            store().set_system_prompt(chat_id, text)
    return text


# ----- the chat -----


def first_run_export(folder: Path) -> None:
    """Export the default model here, with its progress visible (the first run, or after it was deleted)."""
    with st.status("First run: exporting the default model to OpenVINO (under a minute)...", expanded=True) as status:

        def progress(step: str, event: str, seconds: float | None) -> None:
            if event == "done":
                st.write(f"✓ {step} ({seconds:.1f} s)")

        export_model(None, folder, progress=progress)
        status.update(label="Default model exported", state="complete")


def show_history(chat_id: int | None) -> None:
    if chat_id is None:
        return
    for message in store().get(chat_id).messages:
        with st.chat_message(message.role):
            # Markdown, never HTML: model output is not trusted.
            st.markdown(message.content if message.content else "*(no text)*")
            if message.role == "assistant":
                st.caption(describe_reply(message.meta))


def regenerate(chat_id: int) -> None:
    messages = store().get(chat_id).messages
    if messages and messages[-1].role == "assistant":
        store().truncate(chat_id, len(messages) - 1)
    st.session_state.generate = True


def resend_edit(chat_id: int) -> None:
    text = st.session_state.get("edit_text", "").strip()
    messages = store().get(chat_id).messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if text and last_user is not None:
        store().truncate(chat_id, last_user)
        store().add_message(chat_id, "user", text)
        st.session_state.generate = True
    st.session_state.pop("editing", None)


def chat_actions(chat_id: int) -> None:
    """Regenerate and edit, under the last turn."""
    messages = store().get(chat_id).messages
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if last_user is None:
        return
    if st.session_state.get("editing"):
        with st.form("edit"):
            st.text_area("Edit your last message", value=last_user.content, key="edit_text")
            left, right = st.columns(2)
            left.form_submit_button("Send", type="primary", on_click=resend_edit, args=(chat_id,))
            right.form_submit_button("Cancel", on_click=st.session_state.pop, args=("editing", None))
        return
    left, right, _ = st.columns([1, 1, 2])
    left.button("🔄 Regenerate", on_click=regenerate, args=(chat_id,), use_container_width=True)
    right.button("✏️ Edit", on_click=st.session_state.__setitem__, args=("editing", True), use_container_width=True)


def show_streaming_reply(engine: Engine, chat_id: int, settings: GenerationSettings) -> None:
    saved = threading.Event()
    st.session_state.reply_saved = saved
    with st.chat_message("assistant"):
        # Any click, this one included, interrupts the running script; stream_into_store then
        # stops the engine and keeps the partial reply, marked stopped.
        st.button("⏹ Stop", key="stop")
        pieces = stream_into_store(engine, store(), chat_id, settings)
        try:
            st.write_stream(pieces)
        except OvchatError as error:
            st.error(f"{error}")
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


def main() -> None:
    wait_for_the_last_reply()
    chat_id = current_chat()
    prompt = st.chat_input("Ask anything", key="prompt")  # pinned to the bottom wherever it is called
    with st.sidebar:
        chats_sidebar(chat_id)
        folder, device, backend = model_sidebar()
    st.title("💬 ovchat")
    if folder is None:
        st.info("Type the path of an exported model folder in the sidebar.")
        show_history(chat_id)
        return
    try:
        if not os.environ.get(MODEL_ENV) and folder == default_model_folder():
            ensure_default_model(first_run_export)
        engine = shared_engine(str(folder), device, backend)
    except OvchatError as error:
        st.error(f"{error}")
        st.info(
            "Pick another model in the sidebar, or export this one again: "
            "`python export_ir.py SOURCE -o FOLDER --force`."
        )
        show_history(chat_id)
        return
    with st.sidebar:
        settings = sampling_sidebar(engine.context_length)
    system_prompt_sidebar(chat_id)
    st.caption(f"`{folder.name}` on {engine.device} · context {engine.context_length} tokens")

    if prompt:
        if chat_id is None:
            chat_id = store().create(title_from(prompt), st.session_state.pop("new_system", ""))
            open_chat(chat_id)
        store().add_message(chat_id, "user", prompt)
        st.session_state.generate = True
    show_history(chat_id)
    if chat_id is not None and st.session_state.pop("generate", False):
        show_streaming_reply(engine, chat_id, settings)
    elif chat_id is not None:
        chat_actions(chat_id)


main()
