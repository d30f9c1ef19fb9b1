"""A reply drawn token by token, each shaded by its probability, its alternatives on hover.

The HTML is built here from escaped text only: a token's text and its alternatives are model output
and are never markup (``html.escape`` on every piece, in the element's text and in its title).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ovchat.engine.streaming import TokenLogprob
from ovchat.lab.explorer import visible

# Low probability is shaded strong (the surprising tokens stand out); a sure token is left clear.
_SHADE_RGB = "230, 120, 40"


def shade_alpha(probability: float) -> float:
    return round(0.05 + 0.65 * (1.0 - min(max(probability, 0.0), 1.0)), 3)


def token_title(token: TokenLogprob) -> str:
    """The hover text: the token's probability, then its alternatives, one per line."""
    lines = [f"{visible(token.text)}  {token.probability:.1%}  (logprob {token.logprob:.3f})"]
    lines += [f"{rank}. {visible(other.text)}  {other.probability:.1%}" for rank, other in enumerate(token.top, 1)]
    return "\n".join(lines)


def whole_characters(tokens: Sequence[TokenLogprob]) -> list[tuple[str, list[TokenLogprob]]]:
    """The tokens grouped so each group's bytes are whole UTF-8 characters: a Chinese character or an
    emoji is often two or three tokens, each alone only a piece of it."""
    groups: list[tuple[str, list[TokenLogprob]]] = []
    pending: list[TokenLogprob] = []
    for token in tokens:
        pending.append(token)
        joined = b"".join(each.token_bytes for each in pending)
        try:
            text = joined.decode("utf-8")
        except UnicodeDecodeError:
            if len(pending) < 4:  # a UTF-8 character has at most 4 bytes; longer is not a split character
                continue
            text = joined.decode("utf-8", errors="replace")
        groups.append((text, pending))
        pending = []
    if pending:
        groups.append((b"".join(each.token_bytes for each in pending).decode("utf-8", errors="replace"), pending))
    return groups


def shaded_html(tokens: Sequence[TokenLogprob]) -> str:
    """The reply as spans whose background grows stronger as the token was less likely; the tokens of one
    character share a span, shaded by the least likely of them."""
    spans = []
    for text, group in whole_characters(tokens):
        text = html.escape(text).replace("\n", "<br>")
        title = html.escape("\n\n".join(token_title(token) for token in group), quote=True)
        probability = min(token.probability for token in group)
        alpha = shade_alpha(probability)
        spans.append(
            f'<span class="ovchat-token" title="{title}" data-p="{probability:.4f}" '
            f'style="background: rgba({_SHADE_RGB}, {alpha}); border-radius: 3px">{text}</span>'
        )
    return f'<div class="ovchat-shaded" style="line-height: 1.9; white-space: pre-wrap">{"".join(spans)}</div>'
