"""Shoes loader on a small fixture in the release format (tests/fixtures/shoes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from valfusion.data import DataError, load_shoes

FIXTURE = Path(__file__).parent / "fixtures" / "shoes"


def _records() -> list[dict]:
    return json.loads((FIXTURE / "relative_captions_shoes.json").read_text())


def _names(name: str) -> set[str]:
    return set((FIXTURE / name).read_text().split())


def _with_images(tmp_path: Path) -> Path:
    """The fixture plus stand-in images in per-category sub-folders, as the release keeps them."""
    root = tmp_path / "shoes"
    shutil.copytree(FIXTURE, root)
    for record in _records():
        for name in (record["ImageName"], record["ReferenceImageName"]):
            folder = root / "images" / name.removeprefix("img_").rsplit("_", 1)[0] / "0"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (5, 5), (len(name), 0, 0)).save(folder / name)
    return root


def test_triplets_with_images_in_the_training_list_are_training_triplets():
    data = load_shoes(FIXTURE, check_images=False)
    train = _names("train_im_names.txt")
    expected = [
        r for r in _records() if r["ImageName"] in train or r["ReferenceImageName"] in train
    ]
    assert [(t.reference, t.target) for t in data.train.triplets] == [
        (r["ReferenceImageName"], r["ImageName"]) for r in expected
    ]


def test_a_target_in_neither_list_follows_its_reference_into_evaluation():
    data = load_shoes(FIXTURE, check_images=False)
    assert ("img_womens_sneakers_14.jpg", "img_womens_flats_17.jpg") in [
        (t.reference, t.target) for t in data.test.triplets
    ]
    assert len(data.train) + len(data.test) == len(_records())


def test_image_name_is_the_target_and_caption_is_the_stripped_text():
    data = load_shoes(FIXTURE, check_images=False)
    record = _records()[3]
    triplet = data.train.triplets[3]
    assert (triplet.reference, triplet.text, triplet.targets) == (
        record["ReferenceImageName"],
        record["RelativeCaption"].strip(),
        (record["ImageName"],),
    )


def test_evaluation_gallery_is_the_union_of_its_references_and_targets():
    data = load_shoes(FIXTURE, check_images=False)
    expected = {i for t in data.test.triplets for i in (t.reference, t.target)}
    assert set(data.test.gallery) == expected and data.protocol == "val"


def test_images_are_found_by_name_in_sub_folders(tmp_path):
    data = load_shoes(_with_images(tmp_path), image_size=5)
    assert data.test.images(data.test.triplets[0].reference).shape == (3, 5, 5)


def test_missing_image_names_the_caption_line(tmp_path):
    root = _with_images(tmp_path)
    next((root / "images").rglob("img_womens_boots_60.jpg")).unlink()
    with pytest.raises(
        DataError, match=r"relative_captions_shoes\.json:9: image 'img_womens_boots_60\.jpg'"
    ):
        load_shoes(root)


def test_triplet_in_both_lists_names_its_line(tmp_path):
    root = tmp_path / "shoes"
    shutil.copytree(FIXTURE, root)
    with (root / "eval_im_names.txt").open("a") as f:
        f.write("img_womens_pumps_3.jpg\n")
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json:3: .* are in both"):
        load_shoes(root, check_images=False)


def test_record_with_a_missing_key_names_its_line(tmp_path):
    root = tmp_path / "shoes"
    shutil.copytree(FIXTURE, root)
    records = _records()
    del records[1]["RelativeCaption"]
    (root / "relative_captions_shoes.json").write_text(
        "[\n" + ",\n".join(map(json.dumps, records)) + "\n]"
    )
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json:3: expected an object"):
        load_shoes(root, check_images=False)


@pytest.mark.parametrize("caption", ["", "  \n "])
def test_empty_or_blank_caption_names_its_line(tmp_path, caption):
    root = tmp_path / "shoes"
    shutil.copytree(FIXTURE, root)
    records = _records()
    records[1]["RelativeCaption"] = caption
    (root / "relative_captions_shoes.json").write_text(
        "[\n" + ",\n".join(map(json.dumps, records)) + "\n]"
    )
    with pytest.raises(
        DataError,
        match=r"relative_captions_shoes\.json:3: 'RelativeCaption' is empty or only whitespace",
    ):
        load_shoes(root, check_images=False)
