"""ovchat: a local LLM chat assistant on OpenVINO."""

__version__ = "0.1.0"
