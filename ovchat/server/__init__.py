"""``ovchat serve``: the engine behind an OpenAI-compatible HTTP API (FastAPI and uvicorn)."""

# Requests generating or waiting at once; more get 503 instead of queueing without bound.
DEFAULT_MAX_REQUESTS = 64
# A larger body is refused with 413 before it is read (1 MB of chat is about 250k tokens).
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
# Messages in one chat request: over a thousand turns, more than any context a local model holds (the
# oldest turns are dropped to fit anyway), and a bound on the work of fitting a chat to the context.
DEFAULT_MAX_MESSAGES = 2048
# Stop strings in one request: OpenAI takes 4; the page lets a user list a few more, sent as they are.
MAX_STOP_STRINGS = 16
# A client whose connection accepts none of its reply for this long (it stopped reading, or is gone without
# a word) is dropped by the kernel (TCP_USER_TIMEOUT), which cancels its reply and frees what it held.
DEFAULT_WRITE_TIMEOUT_S = 60.0
