"""Specification of the JSON document readers: each element keeps its line; the top level is checked."""

from __future__ import annotations

import re

import pytest

from valfusion.data import DataError
from valfusion.data.annotations import read_json_entries, read_json_records


@pytest.mark.parametrize(
    ("reader", "document", "message"),
    [
        (read_json_records, '{"a": 1}', "expected a JSON array, got dict"),
        (read_json_entries, "[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_a_document_of_the_other_kind_is_an_error_at_its_first_line(
    tmp_path, reader, document, message
):
    path = tmp_path / "captions.json"
    path.write_text(document)
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}:1: {message}')}$"):
        reader(path)


def test_array_elements_keep_the_line_they_start_on(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": 2}\n]\n')
    records = read_json_records(path)
    assert [(r.value, r.source, r.key) for r in records] == [
        ({"a": 1}, f"{path}:2", None),
        ({"a": 2}, f"{path}:4", None),
    ]


def test_object_entries_keep_their_key_and_the_line_they_start_on(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text('{\n  "x": [1],\n  "y": [2]\n}\n')
    records = read_json_entries(path)
    assert [(r.value, r.source, r.key) for r in records] == [
        ([1], f"{path}:2", "x"),
        ([2], f"{path}:3", "y"),
    ]
