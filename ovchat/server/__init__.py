"""``ovchat serve``: the engine behind an OpenAI-compatible HTTP API (FastAPI and uvicorn)."""

# Requests generating or waiting at once; more get 503 instead of queueing without bound.
DEFAULT_MAX_REQUESTS = 64
# A larger body is refused with 413 before it is read (1 MB of chat is about 250k tokens).
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
