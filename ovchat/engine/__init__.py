"""Generating replies: :class:`Engine` and the types of its stream.

Importing this package is cheap: OpenVINO, openvino-genai and transformers are imported when a
model is loaded, by the backend that needs them.
"""

from ovchat.engine.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    OPTIMUM_BACKEND,
    Backend,
    GenerationRequest,
    installed_backends,
)
from ovchat.engine.decoding import DECODING_MODES, DEFAULT_DECODING, Decoding
from ovchat.engine.engine import Engine, StreamingEngine
from ovchat.engine.runtime import available_devices
from ovchat.engine.streaming import FINISH_REASONS, Chunk, Reply, ReplyStats, collect

__all__ = [
    "BACKENDS",
    "DECODING_MODES",
    "DEFAULT_BACKEND",
    "DEFAULT_DECODING",
    "FINISH_REASONS",
    "OPTIMUM_BACKEND",
    "Backend",
    "Chunk",
    "Decoding",
    "Engine",
    "GenerationRequest",
    "Reply",
    "ReplyStats",
    "StreamingEngine",
    "available_devices",
    "collect",
    "installed_backends",
]
