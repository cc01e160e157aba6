"""load_source: one string names a data source; options go to its loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from valfusion.data import DataError, SourceSpec, Triplet, load_source, parse_source, write_folder

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("synthetic", SourceSpec("synthetic")),
        ("fashioniq:/data/fiq", SourceSpec("fashioniq", Path("/data/fiq"), "all")),
        ("fashioniq:/data/fiq:toptee", SourceSpec("fashioniq", Path("/data/fiq"), "toptee")),
        ("fashioniq:/data/a:b", SourceSpec("fashioniq", Path("/data/a:b"), "all")),
        ("shoes:/data/shoes", SourceSpec("shoes", Path("/data/shoes"))),
        ("fashion200k:rel/f200k", SourceSpec("fashion200k", Path("rel/f200k"))),
        ("folder:/data/mine", SourceSpec("folder", Path("/data/mine"))),
    ],
)
def test_source_strings_parse_to_kind_path_and_category(spec, expected):
    assert parse_source(spec) == expected


def test_an_existing_folder_is_a_folder_source(tmp_path):
    assert parse_source(str(tmp_path)) == SourceSpec("folder", tmp_path)


def test_unknown_source_lists_the_accepted_forms():
    with pytest.raises(ValueError, match=r"not a folder and not one of: synthetic, folder:DIR"):
        parse_source("imagenet")


def test_kind_without_a_folder_is_an_error():
    with pytest.raises(ValueError, match="shoes: needs a folder"):
        parse_source("shoes:")


def test_synthetic_source_takes_benchmark_options():
    data = load_source("synthetic", num_train=4, num_test=3, num_distractors=0, seed=1)
    assert (len(data.train), len(data.test), len(data.test.gallery)) == (4, 3, 6)


def test_synthetic_source_can_load_only_the_test_split():
    data = load_source("synthetic", num_train=4, num_test=3, splits=("test",))
    assert data.train is None and len(data.test) == 3


def test_fashioniq_source_with_category_and_protocol():
    data = load_source(
        f"fashioniq:{FIXTURES / 'fashioniq'}:dress",
        splits=("test",),
        protocol="original",
        check_images=False,
    )
    assert list(data.evaluation) == ["dress"] and len(data.test.gallery) == 3817


def test_folder_source_loads_the_generic_format(tmp_path):
    import torch

    images = {"a.png": torch.zeros(3, 4, 4, dtype=torch.uint8), "b.png": torch.ones(3, 4, 4)}
    write_folder(tmp_path, images=images, test=[Triplet("a.png", "brighter", ("b.png",))])
    data = load_source(str(tmp_path), splits=("test",), image_size=4)
    assert data.test.triplets[0].targets == ("b.png",)


def test_option_the_source_does_not_take_is_named():
    with pytest.raises(ValueError, match=r"synthetic does not take protocol"):
        load_source("synthetic", protocol="original")


def test_missing_dataset_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"not a folder"):
        load_source(f"shoes:{tmp_path / 'nowhere'}")


def test_shoes_and_fashion200k_sources_load_their_fixtures():
    shoes = load_source(f"shoes:{FIXTURES / 'shoes'}", check_images=False)
    f200k = load_source(f"fashion200k:{FIXTURES / 'fashion200k'}", check_images=False)
    assert (shoes.name, f200k.name) == ("shoes", "fashion200k")
    assert len(shoes.test) == 4 and len(f200k.test) == 3
