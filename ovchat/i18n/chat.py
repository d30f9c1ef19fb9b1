"""The chat page's texts (chat_streamlit.py), in every language of ovchat.i18n.LANGUAGES.

Keys start with "chat.". A text is a str.format template; both languages of a key name the same
{placeholders}. The English texts are the page's original ones, word for word: tests and users'
habits match them. Errors from the package (its one-line English messages) come in as {detail}.
"""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        # the page
        "chat.language": "Language / 语言",
        "chat.page_title": "💬 ovchat",
        "chat.ask": "Ask anything",
        "chat.no_folder": "Type the path of an exported model folder in the sidebar.",
        "chat.loading": "Loading the model...",
        "chat.load_failed": "Could not load the model: {detail}",
        "chat.load_failed_hint": "Pick another model in the sidebar, or export this one again: "
        "`python export_ir.py SOURCE -o FOLDER --force`.",
        "chat.model_line": "`{folder}` on {device} · context {context} tokens",
        # the sidebar's chats
        "chat.chats": "Chats",
        "chat.new_chat": "➕ New chat",
        "chat.saved_chats": "Saved chats",
        "chat.this_chat": "This chat",
        "chat.title": "Title",
        "chat.save_failed": "Not saved: {detail}",
        "chat.changed_elsewhere": "This chat was changed in another tab or window, so nothing was changed here; "
        "it now shows the latest version.",
        "chat.edit_kept": "Your edit was not sent: {text}",
        "chat.chat_gone": "Chat {id} no longer exists (it was deleted in another tab or window); this is a new chat.",
        "chat.store_failed": "Cannot open the saved chats: {detail}",
        "chat.download_json": "Download JSON",
        "chat.download_markdown": "Download Markdown",
        "chat.confirm_delete": "Delete this chat for good?",
        "chat.delete": "Delete",
        "chat.keep": "Keep",
        "chat.delete_chat": "🗑 Delete chat",
        "chat.import": "Import a chat (JSON)",
        "chat.import_failed": "Could not import the chat: {detail}",
        # the sidebar's model
        "chat.model": "Model",
        "chat.exported_model": "Exported model",
        "chat.exported_model_help": "IR folders under {folder}; export more with export_ir.py.",
        "chat.other_folder": "Other folder...",
        "chat.folder": "Folder",
        "chat.folder_placeholder": "/path/to/exported-model",
        "chat.device": "Device",
        "chat.device_help": "The OpenVINO device that runs the model.",
        "chat.backend": "Generation loop",
        "chat.backend_help": "batched: openvino-genai's continuous batching, so several tabs get replies at once; "
        "genai: its LLMPipeline, one reply at a time; optimum: optimum-intel's OVModelForCausalLM.generate.",
        "chat.backend_help_needs_extra": "batched: openvino-genai's continuous batching, so several tabs get replies "
        "at once; genai: its LLMPipeline, one reply at a time; optimum: optimum-intel's "
        "OVModelForCausalLM.generate (needs the export extra: {command}).",
        # the sidebar's sampling
        "chat.sampling": "Sampling",
        "chat.temperature": "Temperature",
        "chat.temperature_help": "How random the reply is. 0 always takes the likeliest token (same prompt, same "
        "reply); around 0.7 is natural; above 1 gets creative and then incoherent.",
        "chat.top_p": "Top-p",
        "chat.top_p_help": "Sample only from the smallest set of likely tokens whose probabilities add up to p. "
        "Lower is safer and more focused; 1 turns it off.",
        "chat.top_k": "Top-k",
        "chat.top_k_help": "Sample only from the k likeliest tokens. 0 turns it off; 20-50 suits chat.",
        "chat.max_new_tokens": "Max new tokens",
        "chat.max_new_tokens_help": "The longest reply, in tokens (a token is about 3/4 of an English word). "
        "Older turns are left out when the chat and the reply would not fit the model's context.",
        "chat.advanced": "Advanced",
        "chat.repetition_penalty": "Repetition penalty",
        "chat.repetition_penalty_help": "Above 1 makes tokens already in the chat less likely; "
        "it stops small models looping.",
        "chat.seed": "Seed",
        "chat.seed_help": "A number makes sampling repeatable; empty is random each time.",
        "chat.seed_invalid": "The seed must be a whole number; using a random one.",
        "chat.stop_strings": "Stop strings",
        "chat.stop_strings_help": "One per line; the reply ends before any of them.",
        "chat.settings_invalid": "{detail}; using the defaults.",
        "chat.system_prompt": "System prompt",
        "chat.system_prompt_placeholder": "For example: You are a concise assistant.",
        "chat.system_prompt_help": "Instructions the model sees before the chat; saved with this chat.",
        # the first run's export
        "chat.first_run": "First run: exporting the default model to OpenVINO (under a minute)...",
        "chat.first_run_done": "Default model exported",
        "chat.step_done": "✓ {step} ({seconds:.1f} s)",
        "chat.step.load": "load",
        "chat.step.convert": "convert",
        "chat.step.compress": "compress",
        "chat.step.save": "save",
        "chat.step.check": "check",
        # the chat
        "chat.no_text": "*(no text)*",
        "chat.regenerate": "🔄 Regenerate",
        "chat.edit": "✏️ Edit",
        "chat.edit_last": "Edit your last message",
        "chat.send": "Send",
        "chat.cancel": "Cancel",
        "chat.stop": "⏹ Stop",
        "chat.reply_failed": "The reply failed: {detail}",
        # the line under a reply (as ovchat.chats.describe_reply writes it in English)
        # a remote server
        "chat.source": "Runs on",
        "chat.source_local": "Local model",
        "chat.source_remote": "Remote server (OpenAI-compatible)",
        "chat.remote_url": "Server URL",
        "chat.remote_url_help": "The server's OpenAI base URL, ending in /v1 for most servers (ovchat serve, "
        "llama.cpp, vLLM, Ollama) and /v3 for OpenVINO Model Server.",
        "chat.remote_url_placeholder": "http://127.0.0.1:8000/v1",
        "chat.remote_key": "API key",
        "chat.remote_key_help": "Sent to the server only; never saved with a chat, in a log or in the URL. "
        "Leave empty for a server without keys.",
        "chat.remote_connecting": "Connecting to the server...",
        "chat.remote_model": "Model on the server",
        "chat.remote_model_typed": "Model name (the server lists none)",
        "chat.remote_no_models": "The server lists no models: type the name of one.",
        "chat.remote_failed": "Could not use the server: {detail}",
        "chat.remote_no_url": "Type the address of an OpenAI-compatible server in the sidebar.",
        "chat.remote_line": "`{model}` on {url} · context {context} tokens",
        "chat.remote_ignored": "This server refused these settings, so they are not sent: {names}.",
    },
    "zh-CN": {
        # the page
        "chat.language": "Language / 语言",
        "chat.page_title": "💬 ovchat",
        "chat.ask": "有问题，尽管问",
        "chat.no_folder": "请在侧边栏输入导出的模型文件夹路径。",
        "chat.loading": "正在加载模型…",
        "chat.load_failed": "无法加载模型：{detail}",
        "chat.load_failed_hint": "请在侧边栏选择其他模型，或重新导出此模型："
        "`python export_ir.py SOURCE -o FOLDER --force`。",
        "chat.model_line": "`{folder}` · {device} · 上下文 {context} 个词元",
        # the sidebar's chats
        "chat.chats": "对话",
        "chat.new_chat": "➕ 新对话",
        "chat.saved_chats": "已保存的对话",
        "chat.this_chat": "当前对话",
        "chat.title": "标题",
        "chat.save_failed": "未保存：{detail}",
        "chat.changed_elsewhere": "此对话已在另一个标签页或窗口中被修改，因此这里未做任何更改；现在显示的是最新版本。",
        "chat.edit_kept": "你的修改未发送：{text}",
        "chat.chat_gone": "对话 {id} 已不存在（已在另一个标签页或窗口中删除）；这是一个新对话。",
        "chat.store_failed": "无法打开已保存的对话：{detail}",
        "chat.download_json": "下载 JSON",
        "chat.download_markdown": "下载 Markdown",
        "chat.confirm_delete": "要永久删除这个对话吗？",
        "chat.delete": "删除",
        "chat.keep": "保留",
        "chat.delete_chat": "🗑 删除对话",
        "chat.import": "导入对话（JSON）",
        "chat.import_failed": "无法导入对话：{detail}",
        # the sidebar's model
        "chat.model": "模型",
        "chat.exported_model": "导出的模型",
        "chat.exported_model_help": "{folder} 下的 IR 文件夹；可用 export_ir.py 导出更多模型。",
        "chat.other_folder": "其他文件夹…",
        "chat.folder": "文件夹",
        "chat.folder_placeholder": "/导出的/模型/文件夹",
        "chat.device": "设备",
        "chat.device_help": "运行模型的 OpenVINO 设备。",
        "chat.backend": "生成循环",
        "chat.backend_help": "batched：openvino-genai 的连续批处理，多个标签页可同时得到回复；"
        "genai：openvino-genai 的 LLMPipeline，一次生成一个回复；"
        "optimum：optimum-intel 的 OVModelForCausalLM.generate。",
        "chat.backend_help_needs_extra": "batched：openvino-genai 的连续批处理，多个标签页可同时得到回复；"
        "genai：openvino-genai 的 LLMPipeline，一次生成一个回复；optimum：optimum-intel 的 "
        "OVModelForCausalLM.generate（需要安装 export 扩展：{command}）。",
        # the sidebar's sampling
        "chat.sampling": "采样",
        "chat.temperature": "温度",
        "chat.temperature_help": "回复的随机程度。0 总是选择最可能的词元（同样的提示得到同样的回复）；"
        "0.7 左右比较自然；超过 1 会更有创意，再高就会语无伦次。",
        "chat.top_p": "Top-p",
        "chat.top_p_help": "只从累计概率达到 p 的最小候选词元集合中采样。越低越稳妥、越集中；设为 1 即关闭。",
        "chat.top_k": "Top-k",
        "chat.top_k_help": "只从最可能的 k 个词元中采样。设为 0 即关闭；聊天用 20–50 比较合适。",
        "chat.max_new_tokens": "最大生成长度",
        "chat.max_new_tokens_help": "回复的最大长度，以词元计（一个汉字通常占 1–2 个词元，一个英文单词约 1.3 个）。"
        "对话加上回复超出模型的上下文时，会省略较早的轮次。",
        "chat.advanced": "高级设置",
        "chat.repetition_penalty": "重复惩罚",
        "chat.repetition_penalty_help": "大于 1 时，对话中已出现的词元更不容易再次出现，"
        "可避免小模型反复输出同样的内容。",
        "chat.seed": "随机种子",
        "chat.seed_help": "填入一个数字可让采样结果可复现；留空则每次随机。",
        "chat.seed_invalid": "随机种子必须是整数；本次改用随机种子。",
        "chat.stop_strings": "停止词",
        "chat.stop_strings_help": "每行一个；回复会在出现其中任何一个之前结束。",
        "chat.settings_invalid": "设置无效（{detail}），改用默认设置。",
        "chat.system_prompt": "系统提示词",
        "chat.system_prompt_placeholder": "例如：你是一个回答简洁的助手。",
        "chat.system_prompt_help": "模型在对话之前看到的指令；随当前对话保存。",
        # the first run's export
        "chat.first_run": "首次运行：正在把默认模型导出为 OpenVINO 格式（不到一分钟）…",
        "chat.first_run_done": "默认模型已导出",
        "chat.step_done": "✓ {step}（{seconds:.1f} 秒）",
        "chat.step.load": "加载",
        "chat.step.convert": "转换",
        "chat.step.compress": "压缩",
        "chat.step.save": "保存",
        "chat.step.check": "检查",
        # the chat
        "chat.no_text": "*（无文本）*",
        "chat.regenerate": "🔄 重新生成",
        "chat.edit": "✏️ 编辑",
        "chat.edit_last": "编辑你的上一条消息",
        "chat.send": "发送",
        "chat.cancel": "取消",
        "chat.stop": "⏹ 停止",
        "chat.reply_failed": "回复失败：{detail}",
        # the line under a reply
        "chat.source": "模型运行在",
        "chat.source_local": "本地模型",
        "chat.source_remote": "远程服务器（OpenAI 兼容）",
        "chat.remote_url": "服务器地址",
        "chat.remote_url_help": "服务器的 OpenAI 基础地址：大多数服务器（ovchat serve、llama.cpp、vLLM、Ollama）"
        "以 /v1 结尾，OpenVINO Model Server 以 /v3 结尾。",
        "chat.remote_url_placeholder": "http://127.0.0.1:8000/v1",
        "chat.remote_key": "API 密钥",
        "chat.remote_key_help": "只发送给服务器，不会保存到对话、日志或网址中。服务器不需要密钥时留空。",
        "chat.remote_connecting": "正在连接服务器……",
        "chat.remote_model": "服务器上的模型",
        "chat.remote_model_typed": "模型名称（服务器没有列出模型）",
        "chat.remote_no_models": "服务器没有列出模型：请输入一个模型名称。",
        "chat.remote_failed": "无法使用该服务器：{detail}",
        "chat.remote_no_url": "请在侧边栏输入一个 OpenAI 兼容服务器的地址。",
        "chat.remote_line": "`{model}` · {url} · 上下文 {context} 个词元",
        "chat.remote_ignored": "该服务器拒绝了以下设置，因此不再发送：{names}。",
    },
}
