"""The OpenAI request bodies, read field by field: every field of the chat and completions
APIs is either honoured or refused with OpenAI's error (400 ``invalid_request_error`` with
the parameter named); a field OpenAI does not define is refused as OpenAI refuses it.
Nothing is silently ignored. Pure: no I/O, no node, no ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supernode.inference.openai_chat import (
    chat_text,
    needs_chat_api,
    passthrough_fields,
)
from supernode.inference.openai_fields import (
    MAX_MESSAGES,
    ROLES,
    absent_field,
    boolean_field,
    integer_field,
    invalid,
    listed,
    message_content,
    number_field,
    present,
    text_field,
    unsupported,
)
from supernode.inference.usage import MILLI
from supernode.ledger import MAX_INTEGER
from supernode.petals.client.stops import MAX_STOP_CHARS, MAX_STOPS

MAX_MODEL_CHARS = 128
MAX_USER_CHARS = 256
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; chat uses it too here
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (completions' logprobs: at most 5)


@dataclass
class OpenAIRequest:
    """What a chat or completions body asks, checked."""

    chat: bool
    model: str
    prompt: str  # the text the model continues (a chat's messages rendered)
    max_tokens: int | None  # None: the default (DEFAULT_MAX_TOKENS, at most the model's)
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    echo: bool
    user: str | None
    logprobs: int | None  # None: none; else how many alternatives per token (0: the token's own)
    prompt_param: str = "messages"  # where the prompt came from, for errors about it
    extra: dict[str, Any] = field(default_factory=dict)
    # a chat that needs the node's own chat API (tools, a response format, tool messages):
    # the fields that go to it as they are, in the order passed_fields lists them; ``prompt``
    # is then their canonical JSON (what is priced, stored and audited)
    passthrough: dict[str, Any] | None = None

    def native_params(self, max_new_tokens: int) -> dict[str, Any]:
        """The native request's params (integers: sampling knobs in thousandths)."""
        p: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        greedy = self.temperature == 0 or self.top_p == 0
        if not greedy and (self.temperature is not None or self.top_p is not None):
            p["do_sample"] = True
            if self.temperature is not None:
                p["temperature"] = max(1, round(self.temperature * MILLI))
            if self.top_p is not None and self.top_p < 1:
                p["top_p"] = max(1, round(self.top_p * MILLI))
        if self.seed is not None:
            p["seed"] = self.seed
        if self.stop:
            p["stop"] = list(self.stop)
        if self.passthrough is not None:
            p["chat"] = True
        return p


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop", "stop must be a string or a list of strings", "invalid_type")
    if len(items) > MAX_STOPS:
        raise invalid("stop", f"stop takes at most {MAX_STOPS} sequences, got {len(items)}")
    for s in items:
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise invalid("stop", f"a stop sequence must be 1 to {MAX_STOP_CHARS} characters")
    return tuple(dict.fromkeys(items))  # (a repeated one once)


def render_chat(messages: list[tuple[str, str | None, str]]) -> str:
    """A plain chat template: one ``role: content`` line per message (``role (name)`` when
    named), then ``assistant:``."""
    lines = [
        f"{role} ({name}): {text}" if name else f"{role}: {text}" for role, name, text in messages
    ]
    return "\n".join(lines) + "\nassistant:"


def _messages(body: dict[str, Any]) -> str:
    ms = body.get("messages")
    listed(ms, "messages", MAX_MESSAGES)
    out: list[tuple[str, str | None, str]] = []
    for i, m in enumerate(ms):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}]", "a message is an object", "invalid_type")
        role = m.get("role")
        if role in ("tool", "function"):
            raise unsupported(
                f"messages[{i}].role", f"{role} messages need tools, not supported here"
            )
        if role not in ROLES:
            raise invalid(
                f"messages[{i}].role",
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}",
            )
        m = present(m)
        extra = set(m) - {"role", "content", "name"}
        if extra & {"tool_calls", "function_call", "audio", "refusal"}:
            key = sorted(extra)[0]
            raise unsupported(f"messages[{i}].{key}", "tool calls and audio are not supported here")
        if extra:
            key = sorted(extra)[0]
            raise invalid(
                f"messages[{i}].{key}", f"unknown message field {key!r}", "unknown_parameter"
            )
        name = text_field(m, "name", 64)
        out.append((role, name, message_content(m, i)))
    return render_chat(out)


def _prompt(body: dict[str, Any]) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list):
        raise unsupported("prompt", "one text prompt per request (no batches, no token ids)")
    if not isinstance(p, str) or not p:
        raise invalid("prompt", "prompt must be a non-empty string", "invalid_type")
    return p


CHAT_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stream", "stream_options", "stop", "seed", "user", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice",
    "parallel_tool_calls", "functions", "function_call", "response_format", "store",
    "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
    "web_search_options",
}  # fmt: skip
COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
    "stop", "seed", "user", "logprobs", "echo", "suffix", "best_of", "presence_penalty",
    "frequency_penalty", "logit_bias",
}  # fmt: skip


def parse_request(body: Any, chat: bool) -> OpenAIRequest:
    """Check a chat (``chat``) or completions body; OpenAIError (400) with the parameter."""
    if not isinstance(body, dict):
        raise invalid("body", "the body must be a JSON object", "invalid_type")
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for key in body:
        if key not in known:
            raise invalid(
                str(key)[:64],
                f"Unrecognized request argument supplied: {str(key)[:64]}",
                "unknown_parameter",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
        raise invalid("model", f"model must be a string of 1 to {MAX_MODEL_CHARS} characters")
    passthrough = passthrough_fields(body) if chat and needs_chat_api(body) else None
    if passthrough is not None:
        prompt = chat_text(passthrough)
    else:
        prompt = _messages(body) if chat else _prompt(body)
    most = MAX_INTEGER
    max_tokens = integer_field(body, "max_tokens", 1, most)
    if chat:
        max_tokens = integer_field(body, "max_completion_tokens", 1, most) or max_tokens
    n = integer_field(body, "n", 1, 128)
    if n not in (None, 1):
        raise unsupported("n", "one choice per request (n = 1)")
    if not chat:
        best_of = integer_field(body, "best_of", 1, 20)
        if best_of not in (None, 1):
            raise unsupported("best_of", "one candidate per request (best_of = 1)")
        absent_field(body, "suffix", "suffixes (insertion) are not supported here", "")
    stream = boolean_field(body, "stream")
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(so, dict) or set(so) - {"include_usage"}:
            raise invalid("stream_options", "stream_options takes include_usage only")
        include_usage = boolean_field(so, "include_usage")
    # penalties and biases: only the values that ask for nothing
    for name in ("presence_penalty", "frequency_penalty"):
        number_field(body, name, -2, 2)
        absent_field(body, name, "penalties are not supported by these nodes (0 only)", 0, 0.0)
    if body.get("logit_bias") is not None and not isinstance(body["logit_bias"], dict):
        raise invalid("logit_bias", "logit_bias must be an object", "invalid_type")
    absent_field(body, "logit_bias", "logit_bias is not supported by these nodes", {})
    logprobs: int | None = None
    if chat:
        if boolean_field(body, "logprobs"):
            logprobs = integer_field(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
        elif body.get("top_logprobs") is not None:
            raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
        if passthrough is None:  # (what asks for nothing: no tools, text)
            for name in ("functions", "function_call"):
                absent_field(body, name, "deprecated: use tools and tool_choice", [], "none")
            boolean_field(body, "parallel_tool_calls")
        else:
            if logprobs is not None:
                raise unsupported("logprobs", "not with tools or a response format")
        absent_field(body, "store", "stored completions are not supported here", False)
        absent_field(body, "metadata", "metadata goes with stored completions (not supported)", {})
        sv = body.get("service_tier")
        if sv not in (None, "auto", "default"):
            raise unsupported("service_tier", "one service tier here: auto / default")
        if body.get("modalities") not in (None, ["text"]):
            raise unsupported("modalities", "text only")
        for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
            absent_field(body, name, "not supported by these nodes")
    else:
        logprobs = integer_field(body, "logprobs", 0, 5)
    echo = False if chat else boolean_field(body, "echo")
    if echo and logprobs is not None:
        raise unsupported("echo", "echo with logprobs (the prompt's logprobs) is not supported")
    return OpenAIRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=number_field(body, "temperature", 0, 2),
        top_p=number_field(body, "top_p", 0, 1),
        seed=integer_field(body, "seed", 0, MAX_INTEGER),
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        echo=echo,
        user=text_field(body, "user", MAX_USER_CHARS),
        logprobs=logprobs,
        prompt_param="messages" if chat else "prompt",
        passthrough=passthrough,
    )
