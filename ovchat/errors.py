"""The one exception type whose message is shown to users as is."""

from __future__ import annotations

import re


class OvchatError(Exception):
    """A problem the user can fix; its message is one clear line.

    The CLI, the page and the server print ``str(error)`` without a traceback; anything
    else that escapes is a bug and keeps its traceback.
    """


# OpenVINO's C++ errors open with where they were thrown ("Exception from src/inference/src/cpp/core.cpp:84:",
# "Check 'x' failed at src/frontends/ir/src/input_model.cpp:219:") and say what went wrong only on a later line.
_OPENVINO_WHERE = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message that says what went wrong (libraries raise pages of text, and
    OpenVINO's first lines name only a source file), or its type's name."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    telling = [line for line in lines if not _OPENVINO_WHERE.match(line)]
    return (telling or lines or [type(error).__name__])[0]
