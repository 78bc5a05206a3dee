"""A chat that needs the node's own chat API: tools, tool messages and calls, a response
format. Its fields are checked here, one by one (OpenAI's 400 naming the field), and go to
an OpenAI-compatible node as they came. Pure."""

from __future__ import annotations

import json
import re
from typing import Any

from supernode.inference.openai_fields import (
    MAX_MESSAGES,
    ROLES,
    absent_field,
    boolean_field,
    invalid,
    listed,
    message_content,
    present,
    text_field,
)

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
    for i, t in enumerate(listed(v, "tools", MAX_TOOLS)):
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
    for j, call in enumerate(listed(v, where, MAX_TOOL_CALLS)):
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
    for i, m in enumerate(listed(ms, "messages", MAX_MESSAGES)):
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
        _only(present(m), where, allowed)
        if m.get("tool_calls") is not None:
            _tool_calls(m["tool_calls"], f"{where}.tool_calls")
        if m.get("name") is not None:
            text_field(m, "name", 64)
        if not (role == "assistant" and m.get("tool_calls") and m.get("content") is None):
            message_content(m, i)
    return [present(m) for m in ms]


def passthrough_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a chat that go to the node's chat API as they are, checked."""
    for name in ("functions", "function_call"):
        absent_field(body, name, "deprecated: use tools and tool_choice", [], "none")
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
        out["parallel_tool_calls"] = boolean_field(body, "parallel_tool_calls")
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
