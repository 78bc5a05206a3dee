"""The OpenAI request bodies, read field by field: every field of the chat and completions
APIs is either honoured or refused with OpenAI's error (400 ``invalid_request_error`` with
the parameter named); a field OpenAI does not define is refused as OpenAI refuses it.
Nothing is silently ignored. Pure: no I/O, no node, no ledger."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from supernode.inference.usage import MILLI
from supernode.ledger import MAX_INTEGER
from supernode.petals.client.stops import MAX_STOP_CHARS, MAX_STOPS

MAX_MODEL_CHARS = 128
MAX_USER_CHARS = 256
MAX_MESSAGES = 1024
ROLES = ("system", "developer", "user", "assistant")
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; chat uses it too here
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (completions' logprobs: at most 5)

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error as OpenAI answers it: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def unsupported(param: str, why: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {why}", code="unsupported_parameter", param=param)


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


# -- field readers ---------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise invalid(name, f"{name} must be a number", "invalid_type")
    if not lo <= v <= hi:
        raise invalid(name, f"{name} must be from {lo:g} to {hi:g}, got {v:g}")
    return float(v)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(name, f"{name} must be an integer", "invalid_type")
    if not lo <= v <= hi:
        raise invalid(name, f"{name} must be from {lo} to {hi}, got {v}")
    return v


def _boolean(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise invalid(name, f"{name} must be true or false", "invalid_type")
    return v


def _text(body: dict[str, Any], name: str, most: int) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise invalid(name, f"{name} must be a string", "invalid_type")
    if len(v) > most:
        raise invalid(name, f"{name} is over {most} characters")
    return v


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


def _absent(body: dict[str, Any], name: str, why: str, *allowed: Any) -> None:
    """A field we cannot honour: refused unless absent or one of ``allowed`` (values that
    ask for nothing, e.g. ``0`` for a penalty, ``{}`` for a bias)."""
    v = body.get(name)
    if v is None or any(v == a and type(v) is type(a) for a in allowed):
        return
    raise unsupported(name, why)


def _content(m: dict[str, Any], i: int) -> str:
    where = f"messages[{i}].content"
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise unsupported(
                    f"{where}[{j}]", f"only text parts are supported here, not {kind!r}"
                )
            if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise invalid(f"{where}[{j}]", "a text part is {type: text, text: string}")
            parts.append(part["text"])
        return "".join(parts)
    if c is None:
        raise invalid(where, "content is required (tool calls are not supported)")
    raise invalid(where, "content must be a string or a list of text parts", "invalid_type")


def render_chat(messages: list[tuple[str, str | None, str]]) -> str:
    """A plain chat template: one ``role: content`` line per message (``role (name)`` when
    named), then ``assistant:``."""
    lines = [
        f"{role} ({name}): {text}" if name else f"{role}: {text}" for role, name, text in messages
    ]
    return "\n".join(lines) + "\nassistant:"


def _messages(body: dict[str, Any]) -> str:
    ms = body.get("messages")
    if not isinstance(ms, list) or not ms:
        raise invalid("messages", "messages must be a non-empty list", "invalid_type")
    if len(ms) > MAX_MESSAGES:
        raise invalid("messages", f"at most {MAX_MESSAGES} messages")
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
        extra = set(m) - {"role", "content", "name"}
        if extra & {"tool_calls", "function_call", "audio", "refusal"}:
            key = sorted(extra)[0]
            raise unsupported(f"messages[{i}].{key}", "tool calls and audio are not supported here")
        if extra:
            key = sorted(extra)[0]
            raise invalid(
                f"messages[{i}].{key}", f"unknown message field {key!r}", "unknown_parameter"
            )
        name = _text(m, "name", 64)
        out.append((role, name, _content(m, i)))
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


# -- a chat for the node's own chat API (tools, response formats) ----------------------

MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
PASSED_FIELDS = ("messages", "tools", "tool_choice", "parallel_tool_calls", "response_format")


def needs_chat_api(body: dict[str, Any]) -> bool:
    """Whether a chat body asks for what only a node's own chat API gives: tools, a
    response format other than text, or tool calls and results in its messages."""
    if body.get("tools") not in (None, []) or body.get("tool_choice") not in (None, "none"):
        return True
    if body.get("parallel_tool_calls") is not None and body.get("tools"):
        return True
    if body.get("response_format") not in (None, {"type": "text"}):
        return True
    ms = body.get("messages")
    return isinstance(ms, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls") is not None)
        for m in ms
    )


def _name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not NAME_PATTERN.fullmatch(v):
        raise invalid(where, f"{where} must be 1 to 64 letters, digits, _ or -")
    return v


def _object(v: Any, where: str, required: bool = True) -> dict[str, Any]:
    if not isinstance(v, dict):
        if v is None and not required:
            return {}
        raise invalid(where, f"{where} must be an object", "invalid_type")
    return v


def _only(v: dict[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(v) - allowed)
    if extra:
        raise invalid(f"{where}.{extra[0]}", f"unknown field {extra[0]!r}", "unknown_parameter")


def _tools(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise invalid("tools", "tools must be a non-empty list", "invalid_type")
    if len(v) > MAX_TOOLS:
        raise invalid("tools", f"at most {MAX_TOOLS} tools")
    for i, t in enumerate(v):
        where = f"tools[{i}]"
        _only(_object(t, where), where, {"type", "function"})
        if t.get("type") != "function":
            raise invalid(f"{where}.type", "a tool's type is 'function'")
        f = _object(t.get("function"), f"{where}.function")
        _only(f, f"{where}.function", {"name", "description", "parameters", "strict"})
        _name(f.get("name"), f"{where}.function.name")
        if f.get("description") is not None and not isinstance(f["description"], str):
            raise invalid(f"{where}.function.description", "a string", "invalid_type")
        _object(f.get("parameters"), f"{where}.function.parameters", required=False)
        if f.get("strict") is not None and not isinstance(f["strict"], bool):
            raise invalid(f"{where}.function.strict", "true or false", "invalid_type")
    return v


def _tool_choice(v: Any, tools: list[dict[str, Any]] | None) -> Any:
    if v is None:
        return None
    if not tools and v != "none":
        raise invalid("tool_choice", "tool_choice is only allowed when tools are specified")
    if v in ("none", "auto", "required"):
        return v
    if isinstance(v, dict) and v.get("type") == "function":
        f = _object(v.get("function"), "tool_choice.function")
        name = _name(f.get("name"), "tool_choice.function.name")
        if tools and name not in {t["function"]["name"] for t in tools}:
            raise invalid("tool_choice", f"tool_choice names {name!r}, which is not in tools")
        return v
    raise invalid(
        "tool_choice", 'tool_choice is "none", "auto", "required" or {type: function, function}'
    )


def _response_format(v: Any) -> Any:
    if v is None:
        return None
    rf = _object(v, "response_format")
    kind = rf.get("type")
    if kind in ("text", "json_object"):
        _only(rf, "response_format", {"type"})
        return rf
    if kind == "json_schema":
        _only(rf, "response_format", {"type", "json_schema"})
        js = _object(rf.get("json_schema"), "response_format.json_schema")
        _only(js, "response_format.json_schema", {"name", "description", "schema", "strict"})
        _name(js.get("name"), "response_format.json_schema.name")
        _object(js.get("schema"), "response_format.json_schema.schema", required=False)
        return rf
    raise invalid(
        "response_format.type", "response_format.type is text, json_object or json_schema"
    )


def _tool_calls(v: Any, where: str) -> None:
    if not isinstance(v, list) or not v or len(v) > MAX_TOOL_CALLS:
        raise invalid(where, f"{where} must be a list of 1 to {MAX_TOOL_CALLS} calls")
    for j, call in enumerate(v):
        w = f"{where}[{j}]"
        _only(_object(call, w), w, {"id", "type", "function"})
        if not isinstance(call.get("id"), str) or not 1 <= len(call["id"]) <= 128:
            raise invalid(f"{w}.id", "a call's id is a string of 1 to 128 characters")
        if call.get("type") != "function":
            raise invalid(f"{w}.type", "a call's type is 'function'")
        f = _object(call.get("function"), f"{w}.function")
        _only(f, f"{w}.function", {"name", "arguments"})
        _name(f.get("name"), f"{w}.function.name")
        if not isinstance(f.get("arguments"), str):
            raise invalid(f"{w}.function.arguments", "the arguments are a JSON string")


def _chat_messages(ms: Any) -> list[dict[str, Any]]:
    """The messages of a chat for the node's chat API: the roles of a plain chat, tool
    results (``role: tool`` with its ``tool_call_id``) and the assistant's tool calls."""
    if not isinstance(ms, list) or not ms:
        raise invalid("messages", "messages must be a non-empty list", "invalid_type")
    if len(ms) > MAX_MESSAGES:
        raise invalid("messages", f"at most {MAX_MESSAGES} messages")
    for i, m in enumerate(ms):
        where = f"messages[{i}]"
        role = _object(m, where).get("role")
        if role not in (*ROLES, "tool"):
            raise invalid(
                f"{where}.role",
                f"{where}.role must be one of {', '.join(ROLES)}, tool; got {str(role)[:40]!r}",
            )
        allowed = {"role", "content", "name"}
        if role == "assistant":
            allowed |= {"tool_calls", "refusal"}
        if role == "tool":
            allowed = {"role", "content", "tool_call_id"}
            if not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]:
                raise invalid(f"{where}.tool_call_id", "a tool message names its tool_call_id")
        _only(m, where, allowed)
        if m.get("tool_calls") is not None:
            _tool_calls(m["tool_calls"], f"{where}.tool_calls")
        if m.get("name") is not None:
            _text(m, "name", 64)
        if not (role == "assistant" and m.get("tool_calls") and m.get("content") is None):
            _content(m, i)
    return ms


def _passthrough(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a chat that go to the node's chat API as they are, checked."""
    for name in ("functions", "function_call"):
        _absent(body, name, "deprecated: use tools and tool_choice", [], "none")
    tools = _tools(body["tools"]) if body.get("tools") not in (None, []) else None
    out: dict[str, Any] = {"messages": _chat_messages(body.get("messages"))}
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"), tools)
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("parallel_tool_calls") is not None:
        if not tools:
            raise invalid("parallel_tool_calls", "parallel_tool_calls goes with tools")
        out["parallel_tool_calls"] = _boolean(body, "parallel_tool_calls")
    rf = _response_format(body.get("response_format"))
    if rf is not None:
        out["response_format"] = rf
    return out


def chat_text(passthrough: dict[str, Any]) -> str:
    """Its one text form (keys sorted, no spaces): what is priced, stored and audited."""
    try:
        return json.dumps(
            passthrough, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as exc:
        raise invalid("messages", f"the body has no JSON form: {exc}") from None


def passed_param(passthrough: dict[str, Any]) -> str:
    """The field to name when a chat for the node's chat API cannot be served here."""
    return next((k for k in PASSED_FIELDS[1:] if k in passthrough), "messages")


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
    passthrough = _passthrough(body) if chat and needs_chat_api(body) else None
    if passthrough is not None:
        prompt = chat_text(passthrough)
    else:
        prompt = _messages(body) if chat else _prompt(body)
    most = MAX_INTEGER
    max_tokens = _integer(body, "max_tokens", 1, most)
    if chat:
        max_tokens = _integer(body, "max_completion_tokens", 1, most) or max_tokens
    n = _integer(body, "n", 1, 128)
    if n not in (None, 1):
        raise unsupported("n", "one choice per request (n = 1)")
    if not chat:
        best_of = _integer(body, "best_of", 1, 20)
        if best_of not in (None, 1):
            raise unsupported("best_of", "one candidate per request (best_of = 1)")
        _absent(body, "suffix", "suffixes (insertion) are not supported here", "")
    stream = _boolean(body, "stream")
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(so, dict) or set(so) - {"include_usage"}:
            raise invalid("stream_options", "stream_options takes include_usage only")
        include_usage = _boolean(so, "include_usage")
    # penalties and biases: only the values that ask for nothing
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, -2, 2)
        _absent(body, name, "penalties are not supported by these nodes (0 only)", 0, 0.0)
    if body.get("logit_bias") is not None and not isinstance(body["logit_bias"], dict):
        raise invalid("logit_bias", "logit_bias must be an object", "invalid_type")
    _absent(body, "logit_bias", "logit_bias is not supported by these nodes", {})
    logprobs: int | None = None
    if chat:
        if _boolean(body, "logprobs"):
            logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
        elif body.get("top_logprobs") is not None:
            raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
        if passthrough is None:  # (what asks for nothing: no tools, text)
            for name in ("functions", "function_call"):
                _absent(body, name, "deprecated: use tools and tool_choice", [], "none")
            _boolean(body, "parallel_tool_calls")
        else:
            if stream:
                raise unsupported(
                    passed_param(passthrough),
                    "tool calls and response formats are given with whole answers here "
                    "(stream: false)",
                )
            if logprobs is not None:
                raise unsupported("logprobs", "not with tools or a response format")
        _absent(body, "store", "stored completions are not supported here", False)
        _absent(body, "metadata", "metadata goes with stored completions (not supported)", {})
        sv = body.get("service_tier")
        if sv not in (None, "auto", "default"):
            raise unsupported("service_tier", "one service tier here: auto / default")
        if body.get("modalities") not in (None, ["text"]):
            raise unsupported("modalities", "text only")
        for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
            _absent(body, name, "not supported by these nodes")
    else:
        logprobs = _integer(body, "logprobs", 0, 5)
    echo = False if chat else _boolean(body, "echo")
    if echo and logprobs is not None:
        raise unsupported("echo", "echo with logprobs (the prompt's logprobs) is not supported")
    return OpenAIRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        seed=_integer(body, "seed", 0, MAX_INTEGER),
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        echo=echo,
        user=_text(body, "user", MAX_USER_CHARS),
        logprobs=logprobs,
        prompt_param="messages" if chat else "prompt",
        passthrough=passthrough,
    )
