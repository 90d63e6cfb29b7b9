"""Checks of what an admin API request carries, shared by the route modules
(:mod:`.api_deploy`, :mod:`.api_groups`): a JSON object body, its fields one type at a
time, and ids taken from the path. Each refusal is an :class:`.api.ApiError` saying which
field and what was expected, so the HTTP layer below never sees a bad value."""

from __future__ import annotations

import json
import math
from typing import Any

from ..packages.descriptor import ID_RE
from .api import ApiError, _echo

#: Epoch seconds beyond this are a typo (year 36812), not a deployment window.
MAX_EPOCH = 2.0 ** 40


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad-request", message)


def json_object(request) -> dict[str, Any]:
    content = getattr(request, "content", None)
    raw = content.getvalue() if content is not None else b""
    if not raw.strip():
        raise bad_request("the request body is empty; a JSON object is expected")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("the request body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def known_fields(body: dict, allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise bad_request(f"unknown field {_echo(key)!r} (known: {', '.join(allowed)})")


def text_field(body: dict, key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise bad_request(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def names_field(body: dict, key: str, most: int, limit: int, what: str) -> list[str]:
    """A list of 1 to *most* non-empty strings of at most *limit* characters."""
    value = body.get(key)
    if not isinstance(value, list) or not value or len(value) > most or \
            not all(isinstance(v, str) and 0 < len(v) <= limit for v in value):
        raise bad_request(f"{key!r} must be a list of 1 to {most} {what}, each at most "
                          f"{limit} characters")
    return value


def bool_field(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"{key!r} must be true or false")
    return value


def int_field(body: dict, key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{key!r} must be an integer from {low} to {high}")
    return value


def time_field(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not 0 <= value <= MAX_EPOCH:
        raise bad_request(f"{key!r} must be epoch seconds or null")
    return float(value)


def utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not valid UTF-8") from None


def resource_id(raw: bytes, noun: str) -> str:
    """A package, deployment or group id from the path (``dep-<hex>`` for deployments,
    the same safe alphabet as package ids); anything else names nothing: 404."""
    text = utf8(raw, f"{noun} id")
    if not ID_RE.match(text):
        raise ApiError(404, "not-found", f"no {noun} {_echo(text)!r}", refusal=False)
    return text
