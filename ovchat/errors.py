"""The one exception type whose message is shown to users as is."""


class OvchatError(Exception):
    """A problem the user can fix; its message is one clear line.

    The CLI and the page print ``str(error)`` without a traceback; anything
    else that escapes is a bug and keeps its traceback.
    """
