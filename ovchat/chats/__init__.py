"""Saved chats: the SQLite store the page uses, chat files (JSON and Markdown), and recording a
streamed reply into the store."""

from ovchat.chats.files import chat_file_name, chat_to_dict, chat_to_markdown, load_chat, parse_chat, save_chat
from ovchat.chats.recording import describe_reply, reply_logprobs, reply_meta, stream_into_store
from ovchat.chats.store import ChatChanged, Conversation, ConversationInfo, ConversationStore, StoredMessage

__all__ = [
    "ChatChanged",
    "Conversation",
    "ConversationInfo",
    "ConversationStore",
    "StoredMessage",
    "chat_file_name",
    "chat_to_dict",
    "chat_to_markdown",
    "describe_reply",
    "load_chat",
    "parse_chat",
    "reply_logprobs",
    "reply_meta",
    "save_chat",
    "stream_into_store",
]
