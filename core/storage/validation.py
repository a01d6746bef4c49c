"""Limits and checks for text that users put into the database.

Any Unicode is stored exactly (emoji, RTL text, quotes, ``'; DROP TABLE jobs; --``: all values
are bound parameters, never SQL). Refused with a ValueError that names the field:

* text that is not valid Unicode (lone surrogates cannot be stored as UTF-8);
* control characters (Unicode category Cc): none in names, only tab/newline/CR in prompts
  (PostgreSQL cannot store NUL in text at all, so SQLite refuses it too, for one behaviour);
* text over its limit (below).
"""

from __future__ import annotations

import unicodedata
from typing import Any

MAX_NAME_CHARS = 100  # preset names (Discord's autocomplete choice limit), model names
MAX_PROMPT_CHARS = 20_000  # hard storage cap per text field; chant's configured limit (6,000) is lower
MAX_WORD_CHARS = 100  # one banned word
MAX_BANNED_WORDS = 1_000
MAX_CHANNELS = 500
MAX_ADMIN_ROLES = 50
MAX_ERROR_CHARS = 4_000  # longer error texts are cut (they come from chant, not from users)
MAX_SNOWFLAKE = 2**63 - 1

_MULTILINE_OK = {"\t", "\n", "\r"}


def check_text(value: Any, field: str, *, max_chars: int, multiline: bool = False, empty: bool = True) -> str:
    """Return ``value`` unchanged if it may be stored, else raise a ValueError naming ``field``."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text, got {type(value).__name__}")
    if not empty and not value.strip():
        raise ValueError(f"{field} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{field} is {len(value)} characters long; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} is not valid Unicode text (lone surrogate)") from None
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc" and not (multiline and ch in _MULTILINE_OK):
            raise ValueError(f"{field} contains a control character (U+{ord(ch):04X}) at position {i + 1}")
    return value


def check_name(value: Any, field: str = "name") -> str:
    return check_text(value, field, max_chars=MAX_NAME_CHARS, empty=False)


def check_id(value: Any, field: str, *, zero: bool = False) -> int:
    """A Discord snowflake (or 0 where ``zero`` allows it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer id, got {value!r}")
    if not (0 if zero else 1) <= value <= MAX_SNOWFLAKE:
        raise ValueError(f"{field} {value} is out of range")
    return value


def check_json_texts(value: Any, field: str) -> Any:
    """Check every string inside a JSON-like value (preset parameters, job parameters)."""
    if isinstance(value, str):
        check_text(value, field, max_chars=MAX_PROMPT_CHARS, multiline=True)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{field}: keys must be text, got {key!r}")
            check_text(key, f"{field} key", max_chars=MAX_NAME_CHARS)
            check_json_texts(item, f"{field}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_texts(item, f"{field}[{i}]")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{field} must be a finite number")
    elif value is not None and not isinstance(value, (bool, int)):
        raise ValueError(f"{field}: {type(value).__name__} cannot be stored")
    return value
