"""Token log-probabilities from a forward pass of the exported model.

A reply's tokens with their likeliest alternatives, and the next-token logits the sampling lab
shows, come from here. openvino-genai 2026.4 cannot give them: ``GenerationConfig.logprobs`` returns
the chosen token's log-probability only ("any logprobs > 1 is treated as logprobs == 1"), and the
optimum loop is not the default. So the IR is compiled a second time as a plain stateful model, only
when log-probabilities are first asked for, and run once over prompt + reply after the reply has
ended: reading tokens in one pass is many times faster per token than generating them, and chat
speed with log-probabilities off is untouched.

Two things keep it cheap. The model computes logits only for the positions asked for (a ``Slice``
before the final ``MatMul``, as openvino-genai does for the last token): a 49,152-token vocabulary
over a 1,000-token prompt is otherwise most of the work. And the model's state (the KV cache) is kept
between calls: the next turn of a chat, or the explorer's next step, starts with the tokens already
read, so only the new ones are read.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ovchat.engine.streaming import TokenLogprob

MODEL_FILE = "openvino_model.xml"
FIRST_LOGIT_INPUT = "ovchat_first_logit"  # the input that says from which of the fed positions logits are wanted
# Ops between the final MatMul and the logits output that keep one position per position (casts, a scale).
_PASS_THROUGH_OPS = {"Convert", "Multiply", "Divide", "Tanh", "Add"}


def keep_only_wanted_logits(model: Any) -> bool:
    """Make ``model`` compute logits only from position ``ovchat_first_logit`` of the fed tokens on.

    Returns False (and leaves the model as it was) when the logits do not come from a MatMul over
    hidden states of shape [batch, positions, hidden]; the model then computes all of them, which
    is right and only slower.
    """
    import openvino as ov
    from openvino import opset13 as ops

    logits = next((r for r in model.get_results() if "logits" in r.input_value(0).get_names()), None)
    if logits is None:
        return False
    node = logits.input_value(0).get_node()
    for _ in range(8):  # walk up past casts and scales to the vocabulary projection
        if node.get_type_name() == "MatMul":
            break
        if node.get_type_name() not in _PASS_THROUGH_OPS:
            return False
        rank3 = [value for value in node.input_values() if value.get_partial_shape().rank.get_length() == 3]
        if len(rank3) != 1:
            return False
        node = rank3[0].get_node()
    else:
        return False
    hidden_port = next(
        (port for port in node.inputs() if port.get_source_output().get_partial_shape().rank.get_length() == 3), None
    )
    if hidden_port is None:
        return False
    first = ops.parameter([1], ov.Type.i64, name=FIRST_LOGIT_INPUT)
    first.output(0).get_tensor().set_names({FIRST_LOGIT_INPUT})
    sliced = ops.slice(
        hidden_port.get_source_output(),
        first,
        ops.constant(np.array([np.iinfo(np.int64).max], dtype=np.int64)),
        ops.constant(np.array([1], dtype=np.int64)),
        ops.constant(np.array([1], dtype=np.int64)),
    )
    hidden_port.replace_source_output(sliced.output(0))
    model.add_parameters([first])
    model.validate_nodes_and_infer_types()
    return True


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, in float64 so that tiny probabilities keep their digits."""
    values = logits.astype(np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class Scorer:
    """One stateful forward model over an IR folder; one call at a time (its KV cache is one sequence)."""

    def __init__(self, compiled: Any, token_bytes: list[bytes], sliced: bool) -> None:
        self._request = compiled.create_infer_request()
        self._input_names = {name for port in compiled.inputs for name in port.get_names()}
        self.token_bytes = token_bytes
        self.sliced = sliced
        self._fed: list[int] = []  # the tokens whose keys and values are in the model's state
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> Scorer:
        import openvino as ov
        import openvino_genai

        core = ov.Core()
        model = core.read_model(folder / MODEL_FILE)
        sliced = keep_only_wanted_logits(model)
        compiled = core.compile_model(model, device, properties)
        vocabulary = openvino_genai.Tokenizer(str(folder)).get_vocab()
        size = int(compiled.output("logits").get_partial_shape()[-1].get_length())
        token_bytes: list[bytes] = [b""] * size
        for token, token_id in vocabulary.items():
            if 0 <= int(token_id) < size:
                token_bytes[int(token_id)] = token if isinstance(token, bytes) else str(token).encode("utf-8")
        return cls(compiled, token_bytes, sliced)

    def logits_after(self, token_ids: list[int], count: int) -> np.ndarray:
        """Raw logits of shape [count, vocabulary]: row r is the distribution of the token that follows
        ``token_ids[: len(token_ids) - count + 1 + r]``; ``count=1`` is the next token after all of them."""
        if not 1 <= count <= len(token_ids):
            raise ValueError(f"count must be in [1, {len(token_ids)}], not {count}")
        with self._lock:
            first_wanted = len(token_ids) - count
            reuse = len(self._fed) <= first_wanted and token_ids[: len(self._fed)] == self._fed
            if not reuse:
                self._request.reset_state()
                self._fed = []
            start = len(self._fed)
            new = np.array([token_ids[start:]], dtype=np.int64)
            inputs = {
                "input_ids": new,
                "attention_mask": np.ones((1, len(token_ids)), dtype=np.int64),
                "position_ids": np.arange(start, len(token_ids), dtype=np.int64)[None, :],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
            if FIRST_LOGIT_INPUT in self._input_names:
                inputs[FIRST_LOGIT_INPUT] = np.array([first_wanted - start], dtype=np.int64)
            try:
                self._request.infer(inputs)
            except BaseException:
                self._request.reset_state()  # a half-fed state must not be reused
                self._fed = []
                raise
            self._fed = list(token_ids)
            logits = self._request.get_tensor("logits").data[0]
            return np.array(logits[-count:], dtype=np.float32)

    def token(self, token_id: int, logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        raw = self.token_bytes[token_id] if 0 <= token_id < len(self.token_bytes) else b""
        return TokenLogprob(token_id, raw.decode("utf-8", errors="replace"), raw, float(logprob), top)

    def shown_prefix(self, token_ids: list[int], shown_bytes: int) -> list[int]:
        """The first tokens whose bytes lie within the first ``shown_bytes`` of the reply (a reply cut at a
        stop string shows less than it generated; a token across the cut is left out)."""
        total = 0
        for count, token_id in enumerate(token_ids):
            total += len(self.token_bytes[token_id]) if 0 <= token_id < len(self.token_bytes) else 0
            if total > shown_bytes:
                return token_ids[:count]
        return token_ids

    def score(self, prompt_ids: list[int], reply_ids: list[int], top_n: int) -> tuple[TokenLogprob, ...]:
        """Each reply token's log-probability after the prompt and the reply before it, with the ``top_n``
        likeliest tokens at that step."""
        if not reply_ids:
            return ()
        fed = prompt_ids + reply_ids[:-1]
        logprobs = log_softmax(self.logits_after(fed, len(reply_ids)))
        scored = []
        for row, token_id in zip(logprobs, reply_ids, strict=True):
            top: tuple[TokenLogprob, ...] = ()
            if top_n:
                best = np.argpartition(-row, top_n - 1)[:top_n]
                best = best[np.argsort(-row[best], kind="stable")]
                top = tuple(self.token(int(i), row[i]) for i in best)
            scored.append(self.token(int(token_id), row[token_id], top))
        return tuple(scored)
