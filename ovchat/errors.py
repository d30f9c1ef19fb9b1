"""The one exception type whose message is shown to users as is."""

from __future__ import annotations


class OvchatError(Exception):
    """A problem the user can fix; its message is one clear line.

    The CLI, the page and the server print ``str(error)`` without a traceback; anything
    else that escapes is a bug and keeps its traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages of text), or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
