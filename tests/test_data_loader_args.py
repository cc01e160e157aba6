"""Specification of the opening checks every dataset loader shares (one helper serves all four)."""

from __future__ import annotations

import re

import pytest

from valfusion.data import DataError, load_fashion200k, load_fashioniq, load_folder, load_shoes

LOADERS = [load_fashioniq, load_shoes, load_fashion200k, load_folder]


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("splits", [(), ("train", "val"), "train"])
def test_a_split_other_than_train_or_test_is_refused_before_the_folder_is_read(
    tmp_path, loader, splits
):
    missing = tmp_path / "absent"  # the splits are checked first, so this is never looked at
    message = f"splits: expected a non-empty subset of ('train', 'test'), got {tuple(splits)!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as raised:
        loader(missing, splits=splits)
    assert not isinstance(raised.value, DataError)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_root_that_is_not_a_folder_is_a_data_error_naming_it(tmp_path, loader):
    file = tmp_path / "annotations.json"
    file.write_text("[]")
    for root in (tmp_path / "absent", file):
        with pytest.raises(DataError, match=f"^{re.escape(str(root))}: not a folder$"):
            loader(root)
