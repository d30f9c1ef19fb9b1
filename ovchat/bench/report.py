"""What the benches print and write: medians and ratios, the tables, the JSON report and the charts."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovchat.paths import data_home

TABLE_HEADER = [
    "engine", "decode tok/s", "TTFT short ms", "TTFT ~1k ms", "TTFT next turn ms", "load cold s", "load warm s",
    "peak MB",
]  # fmt: skip


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def fixed(value: float | None, digits: int, suffix: str = "") -> str:
    """A table cell: ``value`` with ``digits`` decimals and ``suffix``, or "-" when there is none."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows for the side-by-side table: the figure, then its ratio to llama.cpp in brackets."""

    def cell(value: float | None, base_ratio: float | None, digits: int) -> str:
        if value is None:
            return "-"
        text = f"{value:.{digits}f}"
        return f"{text} ({base_ratio:.2f}x)" if base_ratio is not None else text

    rows = []
    for name, figures in report["engines"].items():
        ratios = figures["ratio_vs_llamacpp"]
        rows.append(
            [
                name,
                cell(figures["decode_tok_s"], ratios["decode_tok_s"], 1),
                cell(ms(figures["ttft_s"]["short"]), ratios["ttft_s"]["short"], 0),
                cell(ms(figures["ttft_s"]["long"]), ratios["ttft_s"]["long"], 0),
                cell(ms(figures["ttft_s"]["followup"]), ratios["ttft_s"]["followup"], 0),
                cell(figures["load_s"].get("cold"), ratios["load_s"]["cold"], 2),
                cell(figures["load_s"].get("warm"), ratios["load_s"]["warm"], 2),
                cell(figures.get("peak_rss_mb"), ratios["peak_rss_mb"], 0),
            ]
        )
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=160)  # a file or a pipe: keep the table's rows whole
    out.print(table)


def write_json(report: dict[str, Any], path: Path | None, kind: str) -> Path:
    """The report at ``path``, or under ``$OVCHAT_HOME/bench/`` named after its kind and the time."""
    path = path or data_home() / "bench" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def figure(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and its axes, drawn off-screen (no display: the bench writes files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, figsize=figsize)


def save_figure(fig: Any, path: Path) -> None:
    """Write a bench chart as PNG and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Bars for decode speed and TTFT per engine, in a PNG."""
    names = list(report["engines"])
    figures = report["engines"]
    fig, axes = figure(1, 4, figsize=(17, 4))
    panels = [
        ("decode tok/s (higher is better)", [figures[n]["decode_tok_s"] or 0 for n in names]),
        ("TTFT, short prompt, ms", [(ms(figures[n]["ttft_s"]["short"]) or 0) for n in names]),
        ("TTFT, ~1,000-token prompt, ms", [(ms(figures[n]["ttft_s"]["long"]) or 0) for n in names]),
        ("TTFT, next turn of that chat, ms", [(ms(figures[n]["ttft_s"]["followup"]) or 0) for n in names]),
    ]
    for axis, (title, values) in zip(axes, panels, strict=True):
        bars = axis.bar(names, values, color=["#d62728" if n.startswith("ovchat") else "#1f77b4" for n in names])
        axis.bar_label(bars, fmt="%.0f")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
    machine = report["machine"]
    fig.suptitle(f"{Path(report['model']['ir']).name} · {machine['cpu']} · {machine['threads']} threads")
    save_figure(fig, path)
