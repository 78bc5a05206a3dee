"""OpenAI's error shape, and the readers of a request body's fields: each refuses a bad
value with OpenAI's 400 naming the field. Pure."""

from __future__ import annotations

import math
from typing import Any

MAX_MESSAGES = 1024
ROLES = ("system", "developer", "user", "assistant")

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


def number_field(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise invalid(name, f"{name} must be a number", "invalid_type")
    if not lo <= v <= hi:
        raise invalid(name, f"{name} must be from {lo:g} to {hi:g}, got {v:g}")
    return float(v)


def integer_field(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(name, f"{name} must be an integer", "invalid_type")
    if not lo <= v <= hi:
        raise invalid(name, f"{name} must be from {lo} to {hi}, got {v}")
    return v


def boolean_field(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise invalid(name, f"{name} must be true or false", "invalid_type")
    return v


def text_field(body: dict[str, Any], name: str, most: int) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise invalid(name, f"{name} must be a string", "invalid_type")
    if len(v) > most:
        raise invalid(name, f"{name} is over {most} characters")
    return v


def absent_field(body: dict[str, Any], name: str, why: str, *allowed: Any) -> None:
    """A field we cannot honour: refused unless absent or one of ``allowed`` (values that
    ask for nothing, e.g. ``0`` for a penalty, ``{}`` for a bias)."""
    v = body.get(name)
    if v is None or any(v == a and type(v) is type(a) for a in allowed):
        return
    raise unsupported(name, why)


def message_content(m: dict[str, Any], i: int) -> str:
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


# what an assistant message read back from an answer may carry empty (an SDK sends the
# answer's message object back as it got it): absent when null or empty
EMPTY_OK = ("tool_calls", "function_call", "audio", "refusal", "annotations")


def present(m: dict[str, Any]) -> dict[str, Any]:
    """``m`` without the fields of EMPTY_OK that are null or empty."""
    return {k: v for k, v in m.items() if not (k in EMPTY_OK and v in (None, []))}


def listed(v: Any, param: str, most: int) -> list[Any]:
    """``v`` as a list of 1 to ``most`` items, or OpenAI's 400 naming ``param``."""
    if not isinstance(v, list) or not v:
        raise invalid(param, f"{param} must be a non-empty list", "invalid_type")
    if len(v) > most:
        raise invalid(param, f"at most {most} {param.rsplit('.', 1)[-1]}")
    return v
