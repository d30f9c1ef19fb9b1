"""The sampling lab's views for the chat page (chat_streamlit.py draws them): UI only.

Token probabilities on a reply, the next-token explorer and the settings comparison. The arithmetic,
the runs and the exports are in ovchat.lab; the texts in ovchat/i18n/lab.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ovchat.chats import reply_logprobs
from ovchat.engine import Engine, StreamingEngine
from ovchat.errors import OvchatError
from ovchat.i18n import DEFAULT_LANGUAGE, translate
from ovchat.lab import presets
from ovchat.lab.compare import MAX_SETTINGS, MIN_SETTINGS, Comparison, compare
from ovchat.lab.explorer import explore, prefix_ids, visible
from ovchat.lab.sampling import REMOVED_BY_GREEDY, REMOVED_BY_TOP_K, REMOVED_BY_TOP_P, sample
from ovchat.lab.shading import shaded_html
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

LANGUAGE_KEY = "language"  # the page's language in st.session_state (chat_streamlit.py sets it)
VIEW_PARAM = "view"  # ?view=explore or ?view=compare: a reload stays in the view
CHAT_VIEW, EXPLORE_VIEW, COMPARE_VIEW = "chat", "explore", "compare"
VIEWS = (CHAT_VIEW, EXPLORE_VIEW, COMPARE_VIEW)
SHOWN_ALTERNATIVES = 5  # alternatives per token when a chat shows token probabilities
TAKE_BUTTONS = 8
REMOVED_LABELS = {REMOVED_BY_TOP_K: "lab.removed_top_k", REMOVED_BY_TOP_P: "lab.removed_top_p"}
REMOVED_LABELS[REMOVED_BY_GREEDY] = "lab.removed_greedy"


def t(key: str, **params: object) -> str:
    """The page's text for ``key`` (ovchat/i18n) in the language chosen in the sidebar."""
    return translate(st.session_state.get(LANGUAGE_KEY, DEFAULT_LANGUAGE), key, **params)


def view_picker() -> str:
    """The sidebar's choice of view; kept in the URL."""
    asked = st.query_params.get(VIEW_PARAM, CHAT_VIEW)
    # Labels computed now, in this run's language: a format_func is also called outside the run (AppTest).
    labels = {CHAT_VIEW: t("lab.view_chat"), EXPLORE_VIEW: t("lab.view_explore"), COMPARE_VIEW: t("lab.view_compare")}
    view = st.segmented_control(
        t("lab.view"),
        VIEWS,
        default=asked if asked in VIEWS else CHAT_VIEW,
        format_func=labels.__getitem__,
        key="lab_view",
    )
    view = view or CHAT_VIEW  # a click on the chosen view unselects it: that is the chat again
    if view == CHAT_VIEW:
        st.query_params.pop(VIEW_PARAM, None)
    else:
        st.query_params[VIEW_PARAM] = view
    return view


# ----- presets and token probabilities in the chat -----


def preset_label(name: str) -> str:
    return t(f"lab.preset_{name}") if name in presets.BUILT_IN_PRESETS else name


def preset_key() -> str:
    return f"preset_{st.session_state.get(LANGUAGE_KEY, DEFAULT_LANGUAGE)}"


def preset_picker(slider_keys: dict[str, str]) -> None:
    """A preset selectbox that sets the sampling sliders (their session keys by field name), and saving the
    current values as a preset of one's own."""
    available = presets.load_presets()
    names = ["", *available]
    # The options' labels change with the language, and Streamlit matches a kept value by its label: a widget
    # per language. The picker only sets the sliders, which keep their values across languages.
    key = preset_key()

    def chosen() -> None:
        name = st.session_state.get(key)
        if name:
            for field, value in available[name].items():
                if field in slider_keys:
                    st.session_state[slider_keys[field]] = value

    st.selectbox(
        t("lab.preset"),
        names,
        key=key,
        format_func={name: preset_label(name) if name else t("lab.preset_custom") for name in names}.__getitem__,
        on_change=chosen,
        help=t("lab.preset_help"),
    )


def save_preset_form(settings: GenerationSettings) -> None:
    with st.popover(t("lab.preset_save")):
        name = st.text_input(t("lab.preset_name"), key="preset_name", max_chars=presets.MAX_NAME)
        if st.button(t("lab.preset_save"), key="preset_save") and name.strip():
            try:
                presets.save_preset(name, settings)
            except (OvchatError, OSError) as error:
                st.error(t("lab.preset_failed", detail=str(error)))
            else:
                st.success(t("lab.preset_saved", name=name.strip()))
        chosen = st.session_state.get(preset_key())
        if chosen and chosen not in presets.BUILT_IN_PRESETS and st.button(t("lab.preset_delete"), key="preset_del"):
            try:
                presets.delete_preset(chosen)
            except (OvchatError, OSError) as error:
                st.error(t("lab.preset_failed", detail=str(error)))
            else:
                st.session_state.pop(preset_key(), None)
                st.rerun()


def probabilities_toggle() -> int | None:
    """The sidebar's switch for token probabilities: the settings' ``logprobs`` (None when off)."""
    on = st.toggle(t("lab.show_probabilities"), key="show_probabilities", help=t("lab.show_probabilities_help"))
    return SHOWN_ALTERNATIVES if on else None


def shaded_reply(meta: dict) -> bool:
    """Draw a saved reply shaded by its tokens' probabilities; False when it has none saved."""
    tokens = reply_logprobs(meta)
    if not tokens:
        return False
    st.html(shaded_html(tokens))  # built from escaped text only (ovchat/lab/shading.py)
    st.caption(t("lab.shaded_caption"))
    return True


# ----- the next-token explorer -----


def explorer_view(engine: Engine, messages: list[Message], settings: GenerationSettings) -> None:
    st.subheader(t("lab.explore_title"))
    st.caption(t("lab.explore_intro"))
    sources = ["chat", "text"] if any(message["role"] == "user" for message in messages) else ["text"]
    source = st.radio(
        t("lab.explore_source"),
        sources,
        format_func={name: t(f"lab.explore_source_{name}") for name in sources}.__getitem__,
        horizontal=True,
        key="explore_source",
    )
    try:
        if source == "chat":
            # A chat that ends with a reply is explored from that reply's first token.
            last_user = max(i for i, message in enumerate(messages) if message["role"] == "user")
            base = engine.encode(messages[: last_user + 1])
            shown_text = ""
        else:
            shown_text = st.text_area(t("lab.explore_text"), t("lab.explore_text_default"), key="explore_text")
            base = prefix_ids(engine, shown_text, as_chat=False)
    except OvchatError as error:
        st.warning(str(error))
        return
    if st.session_state.get("explore_base") != base:  # a new text: start over
        st.session_state.explore_base = base
        st.session_state.explore_taken = []
    taken: list[int] = st.session_state.explore_taken
    rows = st.slider(t("lab.explore_rows"), 5, 40, 15, key="explore_rows")
    try:
        found = explore(engine, base + taken, settings, rows=rows)
    except OvchatError as error:
        st.error(str(error))
        return
    if taken or shown_text:
        st.caption(t("lab.explore_so_far") + " · " + t("lab.explore_taken", count=len(taken)))
        st.code(shown_text[-400:] + engine.tokenizer.decode(taken), language=None, wrap_lines=True)
    distribution = found.distribution
    left, middle, right = st.columns(3)
    left.metric(t("lab.explore_kept"), f"{distribution.kept} / {found.vocabulary}", help=t("lab.explore_kept_help"))
    middle.metric(t("lab.explore_entropy"), f"{distribution.raw_entropy_bits:.2f}", help=t("lab.explore_entropy_help"))
    right.metric(t("lab.explore_entropy_final"), f"{distribution.final_entropy_bits:.2f}")
    st.caption(
        t(
            "lab.explore_removed",
            top_k=distribution.removed_count(REMOVED_BY_TOP_K),
            top_p=distribution.removed_count(REMOVED_BY_TOP_P),
            greedy=distribution.removed_count(REMOVED_BY_GREEDY),
        )
    )
    labels = [f"{rank}. {visible(row.text)}" for rank, row in enumerate(found.rows, 1)]
    chart = pd.DataFrame(
        {
            t("lab.explore_chart_model"): [100 * row.raw for row in found.rows],
            t("lab.explore_chart_tempered"): [100 * row.tempered for row in found.rows],
            t("lab.explore_chart_sampled"): [100 * row.final for row in found.rows],
        },
        index=pd.Index(labels, name=t("lab.col_token")),
    )
    st.bar_chart(chart, stack=False, horizontal=True, height=max(240, 26 * len(labels)), sort=False)
    st.dataframe(
        pd.DataFrame(
            {
                t("lab.col_token"): [visible(row.text) for row in found.rows],
                t("lab.col_id"): [row.token_id for row in found.rows],
                t("lab.col_model"): [round(100 * row.raw, 2) for row in found.rows],
                t("lab.col_tempered"): [round(100 * row.tempered, 2) for row in found.rows],
                t("lab.col_sampled"): [round(100 * row.final, 2) for row in found.rows],
                t("lab.col_removed"): [t(REMOVED_LABELS[r.removed_by]) if r.removed_by else "" for r in found.rows],
            }
        ),
        hide_index=True,
        use_container_width=True,
    )
    st.write(t("lab.take"))
    columns = st.columns(4)
    for rank, row in enumerate(found.rows[:TAKE_BUTTONS]):
        columns[rank % 4].button(
            f"`{visible(row.text)}` {100 * row.final:.0f}%",
            key=f"take_{rank}",
            on_click=taken.append,
            args=(row.token_id,),
            use_container_width=True,
        )
    left, middle, right = st.columns(3)
    left.button(
        t("lab.take_sample"),
        on_click=lambda: taken.append(sample(distribution, np.random.default_rng())),
        use_container_width=True,
    )
    middle.button(t("lab.take_undo"), on_click=lambda: taken and taken.pop(), use_container_width=True)
    right.button(t("lab.take_reset"), on_click=taken.clear, use_container_width=True)


# ----- compare settings -----


def compare_view(engine: StreamingEngine, messages: list[Message], settings: GenerationSettings) -> None:
    st.subheader(t("lab.compare_title"))
    st.caption(t("lab.compare_intro"))
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    prompt = st.text_area(t("lab.compare_prompt"), last_user or t("lab.compare_prompt_default"), key="compare_prompt")
    left, middle, right, far = st.columns(4)
    count = left.number_input(t("lab.compare_count"), MIN_SETTINGS, MAX_SETTINGS, 3, key="compare_count")
    samples = middle.number_input(t("lab.compare_samples"), 1, 10, 3, key="compare_samples")
    first_seed = right.number_input(t("lab.compare_first_seed"), 0, 2**31, 0, key="compare_seed")
    max_new_tokens = far.number_input(t("lab.compare_max_tokens"), 8, 512, 48, step=8, key="compare_max_tokens")
    available = presets.load_presets()
    plan: dict[str, GenerationSettings] = {}
    for number, column in enumerate(st.columns(int(count)), 1):
        with column:
            plan.update(setting_column(number, available, settings.with_changes(max_new_tokens=int(max_new_tokens))))
    if st.button(t("lab.compare_run"), type="primary", key="compare_run"):
        total = int(count) * int(samples)
        progress = st.progress(0.0, text=t("lab.compare_running", done=0, total=total))
        made: list[object] = []

        def on_sample(sample_made: object) -> None:
            made.append(sample_made)
            progress.progress(len(made) / total, text=t("lab.compare_running", done=len(made), total=total))

        try:
            st.session_state.comparison = compare(
                engine, [{"role": "user", "content": prompt}], plan, int(samples), int(first_seed), on_sample
            )
        except OvchatError as error:
            st.error(t("lab.compare_failed", detail=str(error)))
        progress.empty()
    comparison: Comparison | None = st.session_state.get("comparison")
    if comparison is not None:
        show_comparison(comparison)


def setting_column(
    number: int, available: dict[str, dict[str, float | int]], base: GenerationSettings
) -> dict[str, GenerationSettings]:
    """One column's preset and sliders; its settings under a name unique in the comparison."""
    names = list(available)
    default = names[(number - 1) % len(names)]
    keys = {field: f"compare_{field}_{number}" for field in presets.PRESET_FIELDS}

    def chosen() -> None:
        for field, value in available[st.session_state[f"compare_preset_{number}"]].items():
            st.session_state[keys[field]] = value

    name = st.selectbox(
        t("lab.compare_setting", number=number),
        names,
        index=names.index(default),
        format_func={each: preset_label(each) for each in names}.__getitem__,
        key=f"compare_preset_{number}",
        on_change=chosen,
    )
    for field, value in available[default].items():
        st.session_state.setdefault(keys[field], value)
    temperature = st.slider(t("chat.temperature"), 0.0, 2.0, key=keys["temperature"], step=0.05)
    top_p = st.slider(t("chat.top_p"), 0.05, 1.0, key=keys["top_p"], step=0.01)
    top_k = st.slider(t("chat.top_k"), 0, 200, key=keys["top_k"])
    penalty = st.slider(t("chat.repetition_penalty"), 1.0, 2.0, key=keys["repetition_penalty"], step=0.05)
    chosen_settings = base.with_changes(
        temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=penalty, seed=None, logprobs=None
    )
    return {f"{number}. {preset_label(name)}": chosen_settings}


def show_comparison(comparison: Comparison) -> None:
    summaries = comparison.summaries()
    st.markdown(f"**{t('lab.compare_summary')}**")
    table = pd.DataFrame(
        {
            t("lab.col_setting"): [s.setting for s in summaries],
            t("lab.col_samples"): [s.samples for s in summaries],
            t("lab.col_length"): [round(s.mean_length, 1) for s in summaries],
            t("lab.col_distinct_1"): [round(s.distinct_1, 3) for s in summaries],
            t("lab.col_distinct_2"): [round(s.distinct_2, 3) for s in summaries],
            t("lab.col_logprob"): [None if s.mean_logprob is None else round(s.mean_logprob, 3) for s in summaries],
            t("lab.col_speed"): [None if s.decode_tok_s is None else round(s.decode_tok_s, 1) for s in summaries],
        }
    )
    st.dataframe(table, hide_index=True, use_container_width=True)
    st.caption(t("lab.compare_help_metrics"))
    st.markdown(f"**{t('lab.compare_chart')}**")
    chart = table.set_index(t("lab.col_setting"))[[t("lab.col_distinct_1"), t("lab.col_distinct_2")]]
    st.bar_chart(chart, stack=False, height=260)
    left, right = st.columns(2)
    left.download_button(
        t("lab.compare_download_csv"), comparison.to_csv(), "comparison.csv", "text/csv", use_container_width=True
    )
    right.download_button(
        t("lab.compare_download_json"),
        comparison.to_json(),
        "comparison.json",
        "application/json",
        use_container_width=True,
    )
    for column, summary in zip(st.columns(len(summaries)), summaries, strict=True):
        with column:
            st.markdown(f"**{summary.setting}**")
            for each in comparison.samples_of(summary.setting):
                with st.container(border=True):
                    st.markdown(each.text or "∅")  # Markdown, never HTML: model output is not trusted
                    st.caption(t("lab.compare_seed", seed=each.seed, tokens=each.new_tokens, finish=each.finish_reason))


def draw_view(view: str, engine: StreamingEngine, messages: list[Message], settings: GenerationSettings) -> None:
    if view == EXPLORE_VIEW:
        if not isinstance(engine, Engine):  # a remote server gives no logits
            st.subheader(t("lab.explore_title"))
            st.info(t("lab.explore_needs_local"))
            return
        explorer_view(engine, messages, settings)
    else:
        compare_view(engine, messages, settings)
