"""Reading annotation files so that every record keeps its ``file:line``.

Errors in user data must point at the offending line, so the readers here return
each record with the line it starts on: JSON Lines files line by line, and JSON
documents (an array of records, or an object of ``key: value`` entries) element by
element with :meth:`json.JSONDecoder.raw_decode`, which reports where each element
ends. Where several elements start on one line (compact JSON), the source also
names the element: ``"cap.dress.val.json:1 (element 17)"``.

Captions are checked here too, once for every loader (:func:`check_caption`): an empty
or whitespace-only caption is an error at its ``file:line``, found when the annotations
are read, before any training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valfusion.data.errors import DataError

__all__ = [
    "Record",
    "check_caption",
    "read_json_entries",
    "read_json_records",
    "read_jsonl",
    "read_lines",
]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Record:
    """One annotation record and where it came from.

    Attributes:
        value: the parsed value (a dict for JSON records, a str for text lines).
        source: ``"path:line"`` of the line the record starts on.
        key: the key of the entry for JSON objects, else ``None``.
    """

    value: Any
    source: str
    key: str | None = None


def check_caption(value: object, source: str, key: str) -> str:
    """Require a caption with at least one non-whitespace character (so at least one token).

    Args:
        value: the caption as read from the record.
        source: the record's ``"path:line"``.
        key: the field the caption came from (``"text"``, ``"RelativeCaption"``...).

    Returns:
        ``value`` unchanged.

    Raises:
        DataError: ``path:line: 'key' ...`` when ``value`` is not a string, or is empty or
            only whitespace (such a query would train and rank on no text at all).
    """
    if not isinstance(value, str):
        raise DataError(f"{source}: {key!r} must be a string, got {value!r:.80}")
    if not value.strip():
        raise DataError(
            f"{source}: {key!r} is empty or only whitespace (got {value!r:.40}); "
            "every query needs a caption"
        )
    return value


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from err


def read_lines(path: str | Path) -> list[Record]:
    """Read the non-blank lines of a text file, stripped.

    Args:
        path: the file.

    Returns:
        One :class:`Record` per non-blank line (``value`` is the stripped line).

    Raises:
        DataError: the file is missing or not UTF-8.
    """
    path = Path(path)
    text = _read_text(path)
    # split on "\n" only: str.splitlines() would also break JSON strings holding U+2028
    return [
        Record(line.strip(), f"{path}:{number}")
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSON Lines file: one JSON object per non-blank line.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        One :class:`Record` per non-blank line, ``value`` the parsed object.

    Raises:
        DataError: ``path:line: malformed JSON ...`` or ``... expected a JSON object``.
    """
    records = []
    for line in read_lines(path):
        try:
            value = json.loads(line.value)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{line.source}: malformed JSON ({err.msg} at column {err.colno})"
            ) from err
        if not isinstance(value, dict):
            raise DataError(f"{line.source}: expected a JSON object, got {type(value).__name__}")
        records.append(Record(value, line.source))
    return records


def _load_document(path: Path) -> tuple[str, Any]:
    text = _read_text(path)
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
        ) from err


def _skip_whitespace(text: str, pos: int) -> int:
    """The offset of the first non-whitespace character at or after ``pos``."""
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string, so it always matches
    return match.end()


def _elements(text: str, open_char: str) -> Iterator[tuple[int, str | None, Any]]:
    """Yield ``(start offset, key or None, value)`` for each top-level element.

    Only called on text that ``json.loads`` accepted, so the structure is known to be valid.
    """
    pos = _skip_whitespace(text, 0)
    close_char = "]" if open_char == "[" else "}"
    pos = _skip_whitespace(text, pos + 1)
    while text[pos] != close_char:
        start, key = pos, None
        if open_char == "{":
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_whitespace(text, pos) + 1  # past the ':'
            pos = _skip_whitespace(text, pos)
        value, pos = _DECODER.raw_decode(text, pos)
        yield start, key, value
        pos = _skip_whitespace(text, pos)
        if text[pos] == ",":
            pos = _skip_whitespace(text, pos + 1)


def _with_lines(path: Path, text: str, open_char: str) -> list[Record]:
    located, line, last = [], 1, 0
    for start, key, value in _elements(text, open_char):
        line += text.count("\n", last, start)
        last = start
        located.append((line, key, value))
    per_line: dict[int, int] = {}
    for line, _, _ in located:
        per_line[line] = per_line.get(line, 0) + 1
    records = []
    for index, (line, key, value) in enumerate(located):
        source = f"{path}:{line}"
        if per_line[line] > 1:  # compact JSON: the line alone does not say which element
            source += f" (key {key!r})" if key is not None else f" (element {index})"
        records.append(Record(value, source, key))
    return records


_CONTAINERS: dict[str, tuple[type, str]] = {"[": (list, "array"), "{": (dict, "object")}


def _read_located(path: str | Path, open_char: str) -> list[Record]:
    """The elements of a JSON array (``open_char="["``) or object (``"{"``), each with its line."""
    path = Path(path)
    text, data = _load_document(path)
    container, name = _CONTAINERS[open_char]
    if not isinstance(data, container):
        raise DataError(f"{path}:1: expected a JSON {name}, got {type(data).__name__}")
    return _with_lines(path, text, open_char)


def read_json_records(path: str | Path) -> list[Record]:
    """Read a JSON document that is an array, keeping the line each element starts on.

    Args:
        path: the ``.json`` file (e.g. FashionIQ ``cap.dress.val.json``).

    Returns:
        One :class:`Record` per array element, in order.

    Raises:
        DataError: missing file, malformed JSON (with its line) or a top level that is not an array.
    """
    return _read_located(path, "[")


def read_json_entries(path: str | Path) -> list[Record]:
    """Read a JSON document that is an object, keeping the line each entry starts on.

    Duplicate keys are all returned (``json.loads`` would silently keep the last one).

    Args:
        path: the ``.json`` file (e.g. FashionIQ ``asin2attr.dress.val.json``).

    Returns:
        One :class:`Record` per ``key: value`` entry (``key`` set), in file order.

    Raises:
        DataError: missing file, malformed JSON (with its line) or a top level that is not an object.
    """
    return _read_located(path, "{")
