"""ovchat's chat page: `streamlit run chat_streamlit.py` (or `./run.sh`).

UI only. Loading, exporting and generating live in the ovchat package; the page holds
the visible chat in session_state and one engine per model in st.cache_resource.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from ovchat.engine import Engine
from ovchat.errors import OvchatError
from ovchat.export import default_model_folder, export_model
from ovchat.settings import GenerationSettings
from ovchat.sources import is_ir_folder

MODEL_ENV = "OVCHAT_MODEL"  # an IR folder to chat with instead of the default model

st.set_page_config(page_title="ovchat", page_icon="💬")


@st.cache_resource(show_spinner="Loading the model...")
def load_engine(path: str, device: str) -> Engine:
    """One engine per model and device, shared by every browser tab."""
    return Engine.load(path, device=device)


def model_folder() -> Path:
    configured = os.environ.get(MODEL_ENV)
    if configured:
        return Path(configured).expanduser()
    folder = default_model_folder()
    if not is_ir_folder(folder):
        with st.status("First run: exporting the default model to OpenVINO...", expanded=True) as status:

            def progress(step: str, event: str, seconds: float | None) -> None:
                if event == "done":
                    st.write(f"✓ {step} ({seconds:.1f} s)")

            export_model(None, folder, progress=progress)
            status.update(label="Default model exported", state="complete")
    return folder


def sidebar_settings() -> GenerationSettings:
    with st.sidebar:
        st.header("Sampling")
        temperature = st.slider(
            "Temperature", 0.0, 2.0, 0.7, 0.05, help="Higher is more random; 0 always picks the likeliest token."
        )
        top_p = st.slider(
            "Top-p",
            0.05,
            1.0,
            0.9,
            0.05,
            help="Sample only from the smallest set of tokens whose probability adds up to p.",
        )
        top_k = st.slider("Top-k", 0, 200, 40, 1, help="Sample only from the k likeliest tokens; 0 turns this off.")
        max_new_tokens = st.slider("Max new tokens", 16, 2048, 512, 16, help="The longest reply, in tokens.")
        if st.button("New chat", use_container_width=True):
            st.session_state.messages = []
    return GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens)


def main() -> None:
    st.title("💬 ovchat")
    settings = sidebar_settings()
    try:
        folder = model_folder()
        engine = load_engine(str(folder), "CPU")
    except OvchatError as error:
        st.error(f"{error}")
        st.info("Export a model with `python export_ir.py`, or set OVCHAT_MODEL to an exported folder.")
        return
    st.caption(f"Model: `{folder.name}` on {engine.device}")

    messages = st.session_state.setdefault("messages", [])
    for message in messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])

    prompt = st.chat_input("Ask anything")
    if not prompt:
        return
    messages.append({"role": "user", "content": prompt})
    with st.chat_message("user"):
        st.markdown(prompt)
    with st.chat_message("assistant"):
        final: dict[str, object] = {}

        def text_chunks():  # write_stream renders the Markdown as it grows
            for chunk in engine.stream(messages, settings):
                if chunk.finish_reason is None:
                    yield chunk.text
                else:
                    final["chunk"] = chunk

        try:
            reply = st.write_stream(text_chunks())
        except OvchatError as error:
            messages.pop()
            st.error(str(error))
            return
        chunk = final.get("chunk")
        if chunk is not None:
            rate = f", {chunk.decode_tok_s:.1f} tok/s" if chunk.decode_tok_s else ""
            st.caption(
                f"{chunk.new_tokens} tokens, first token {chunk.ttft_s or 0:.2f} s{rate} · {chunk.finish_reason}"
            )
    messages.append({"role": "assistant", "content": reply if isinstance(reply, str) else "".join(map(str, reply))})


main()
