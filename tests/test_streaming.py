"""The engine's pure layer, with no model and no thread: the final stats, the stats type, joining a stream,
and what makes a model folder complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovchat.engine import Chunk, Reply, ReplyStats, collect
from ovchat.engine.streaming import TokenRecord, reply_stats
from ovchat.errors import OvchatError
from ovchat.model_folder import REQUIRED_FILES, is_complete, missing_files, model_context_length

EOS = 2


def record(token_ids: list[int], started: float = 10.0, first_at: float | None = 10.5) -> TokenRecord:
    tokens = TokenRecord(started)
    if token_ids:
        tokens.add(token_ids[:1], first_at if first_at is not None else started)
        tokens.add(token_ids[1:], 99.0)  # later tokens do not move the first token's time
    return tokens


def stats_of(token_ids: list[int], stopped_by_text: bool = False, max_new_tokens: int = 5) -> ReplyStats:
    return reply_stats(
        record(token_ids),
        ended_at=12.5,
        prompt_tokens=7,
        max_new_tokens=max_new_tokens,
        end_token_ids={EOS},
        stopped_by_text=stopped_by_text,
        trimmed_turns=1,
    )


@pytest.mark.parametrize(
    ("token_ids", "stopped_by_text", "finish"),
    [
        ([5, 6, EOS], False, "eos"),
        ([5, 6, 7, 8, 9], False, "length"),
        ([5, 6], False, "cancelled"),
        ([], False, "cancelled"),
        ([5, 6, EOS], True, "stop"),  # a stop string wins over the end token that followed it
        ([5, 6, 7, 8, 9], True, "stop"),
    ],
)
def test_how_a_reply_ended(token_ids: list[int], stopped_by_text: bool, finish: str) -> None:
    assert stats_of(token_ids, stopped_by_text).finish_reason == finish


def test_timings_come_from_the_first_token() -> None:
    stats = stats_of([5, 6, 7, 8, EOS])
    assert (stats.prompt_tokens, stats.new_tokens, stats.trimmed_turns) == (7, 5, 1)
    assert stats.ttft_s == pytest.approx(0.5)  # first token at 10.5, started at 10.0
    assert stats.decode_tok_s == pytest.approx(4 / 2.0)  # 4 tokens after the first, in the 2 s to 12.5


def test_no_rate_without_a_second_token() -> None:
    one = stats_of([EOS])
    assert one.ttft_s == pytest.approx(0.5) and one.decode_tok_s is None
    none = stats_of([])
    assert none.ttft_s is None and none.decode_tok_s is None and none.new_tokens == 0


def test_stats_round_trip_and_describe_themselves() -> None:
    stats = ReplyStats("eos", prompt_tokens=12, new_tokens=3, ttft_s=0.01, decode_tok_s=100.0, trimmed_turns=2)
    assert ReplyStats.from_dict(stats.to_dict()) == stats
    assert ReplyStats.from_dict({**stats.to_dict(), "stopped": False, "streaming": True}) == stats
    assert (
        stats.describe()
        == "3 tokens · first token 0.01 s · 100.0 tok/s · eos · 2 older turns left out to fit the context"
    )
    assert ReplyStats("cancelled", 5, 1).describe(finish_label="stopped") == "1 tokens · stopped"
    # A saved reply that was stopped before it ended, or is still streaming, has no stats.
    assert ReplyStats.from_dict({"finish_reason": "cancelled", "stopped": True}) is None
    assert ReplyStats.from_dict({"streaming": True}) is None


def test_collect_joins_text_and_keeps_the_stats() -> None:
    stats = ReplyStats("length", 3, 2)
    seen: list[str] = []
    reply = collect(iter([Chunk("数学"), Chunk("😀"), Chunk(stats=stats)]), on_text=seen.append)
    assert reply == Reply("数学😀", stats) and seen == ["数学", "😀"]
    with pytest.raises(OvchatError, match="without a final chunk"):
        collect(iter([Chunk("half")]))


def test_a_model_folder_is_complete_only_with_every_required_file(tmp_path: Path) -> None:
    assert not is_complete(tmp_path / "absent") and missing_files(tmp_path) == list(REQUIRED_FILES)
    for name in REQUIRED_FILES:
        (tmp_path / name).write_text("")
    assert is_complete(tmp_path) and missing_files(tmp_path) == []
    (tmp_path / "config.json").unlink()
    assert not is_complete(tmp_path) and missing_files(tmp_path) == ["config.json"]


def test_context_length_from_the_config() -> None:
    assert model_context_length({"max_position_embeddings": 8192}) == 8192
    assert model_context_length({"n_positions": 1024}) == 1024
    assert model_context_length({"max_position_embeddings": True}) == model_context_length({})  # a bool is no length
