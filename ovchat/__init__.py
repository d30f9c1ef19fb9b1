"""ovchat: a local LLM chat assistant on OpenVINO.

The public API; everything else is importable but may change. Importing ovchat is cheap:
OpenVINO and the generation libraries load with the first model. The layout is described in
docs/architecture.md.
"""

__version__ = "0.1.0"  # before the imports: the export manifest records it

from ovchat.chats import ConversationStore, load_chat, save_chat, stream_into_store
from ovchat.engine import BACKENDS, Chunk, Engine, Reply, ReplyStats, available_devices, collect
from ovchat.errors import OvchatError
from ovchat.export import ExportOptions, ensure_default_model, export_model
from ovchat.paths import data_home
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

__all__ = [
    "BACKENDS",
    "Chunk",
    "ConversationStore",
    "Engine",
    "ExportOptions",
    "GenerationSettings",
    "Message",
    "OvchatError",
    "Reply",
    "ReplyStats",
    "__version__",
    "available_devices",
    "collect",
    "data_home",
    "ensure_default_model",
    "export_model",
    "load_chat",
    "save_chat",
    "stream_into_store",
]
