"""The line under a reply (ReplyStats.describe): the page, the terminal and the saved chats share it.

Keys start with "reply.". A text is a str.format template; both languages of a key name the same
{placeholders}.
"""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "reply.tokens": "{count} tokens",
        "reply.first_token": "first token {seconds:.2f} s",
        "reply.speed": "{speed:.1f} tok/s",
        "reply.trimmed": "{count} older turns left out to fit the context",
        "reply.finish.eos": "eos",
        "reply.finish.length": "length",
        "reply.finish.stop": "stop",
        "reply.finish.cancelled": "cancelled",
        "reply.finish.stopped": "stopped",
        "reply.failed": "cut short: {error}",
        "reply.unfinished": "unfinished (still being written, or its page stopped while writing it)",
    },
    "zh-CN": {
        "reply.tokens": "{count} 个词元",
        "reply.first_token": "首个词元 {seconds:.2f} 秒",
        "reply.speed": "{speed:.1f} 词元/秒",
        "reply.trimmed": "为适应上下文，省略了较早的 {count} 轮对话",
        "reply.finish.eos": "自然结束",
        "reply.finish.length": "达到长度上限",
        "reply.finish.stop": "遇到停止词",
        "reply.finish.cancelled": "已取消",
        "reply.finish.stopped": "已停止",
        "reply.failed": "中途出错：{error}",
        "reply.unfinished": "未完成（仍在生成，或生成时页面已停止）",
    },
}
