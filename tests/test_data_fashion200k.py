"""Fashion200k loader on a small fixture in the release format (tests/fixtures/fashion200k)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from valfusion.data import DataError, load_fashion200k

FIXTURE = Path(__file__).parent / "fixtures" / "fashion200k"
COCKTAIL = "women/dresses/cocktail_and_party_dresses"


def _captions(split: str) -> dict[str, str]:
    captions = {}
    for path in sorted((FIXTURE / "labels").glob(f"*_{split}_detect_all.txt")):
        for line in path.read_text().splitlines():
            image, _, caption = line.split("\t")
            captions[image] = caption
    return captions


def _with_images(tmp_path: Path) -> Path:
    root = tmp_path / "f200k"
    shutil.copytree(FIXTURE, root)
    for split in ("train", "test"):
        for image in _captions(split):
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (7, 7, 7)).save(root / image, format="JPEG")
    return root


def test_test_query_text_replaces_the_differing_word():
    data = load_fashion200k(FIXTURE, splits=("test",), check_images=False)
    # captions: green sequin cocktail dress -> gold sequin / green velvet; navy -> grey maxi skirt
    assert [t.text for t in data.test.triplets] == [
        "replace green with gold",
        "replace sequin with velvet",
        "replace navy with grey",
    ]


def test_test_targets_are_every_test_image_with_the_target_caption():
    data = load_fashion200k(FIXTURE, splits=("test",), check_images=False)
    captions = _captions("test")
    for triplet, line in zip(
        data.test.triplets, (FIXTURE / "test_queries.txt").read_text().splitlines()
    ):
        reference, target = line.split()
        expected = {i for i, c in captions.items() if c == captions[target]} - {reference}
        assert set(triplet.targets) == expected
    assert len(data.test.triplets[0].targets) == 2


def test_test_gallery_is_every_test_image():
    data = load_fashion200k(FIXTURE, splits=("test",), check_images=False)
    assert list(data.test.gallery) == list(_captions("test"))


def test_training_pairs_differ_in_exactly_one_word_named_by_the_text():
    data = load_fashion200k(FIXTURE, splits=("train",), check_images=False)
    captions = _captions("train")
    for triplet in data.train.triplets:
        old, new = captions[triplet.reference].split(), captions[triplet.target].split()
        diff = [(a, b) for a, b in zip(old, new) if a != b]
        assert len(old) == len(new) and len(diff) == 1
        assert triplet.text == f"replace {diff[0][0]} with {diff[0][1]}"
        assert {captions[t] for t in triplet.targets} == {captions[triplet.target]}


def test_every_training_image_with_a_sibling_caption_gives_one_triplet():
    data = load_fashion200k(FIXTURE, splits=("train",), check_images=False)
    references = [t.reference for t in data.train.triplets]
    captions = _captions("train")
    without_sibling = [i for i, c in captions.items() if c == "white lace midi dress"]
    assert sorted(references) == sorted(set(captions) - set(without_sibling))


def test_side_information_is_the_caption():
    data = load_fashion200k(FIXTURE, splits=("test",), check_images=False)
    assert dict(data.test.side_info) == _captions("test")


def test_same_seed_gives_same_training_triplets():
    a = load_fashion200k(FIXTURE, splits=("train",), seed=3, check_images=False)
    b = load_fashion200k(FIXTURE, splits=("train",), seed=3, check_images=False)
    assert a.train.triplets == b.train.triplets


def test_images_are_read_at_their_relative_paths(tmp_path):
    data = load_fashion200k(_with_images(tmp_path), image_size=4)
    assert data.train.images(data.train.triplets[0].target).shape == (3, 4, 4)


def test_malformed_label_line_names_file_and_line(tmp_path):
    root = tmp_path / "f200k"
    shutil.copytree(FIXTURE, root)
    with (root / "labels" / "skirt_test_detect_all.txt").open("a") as f:
        f.write("women/skirts/maxi/1/1_0.jpeg 0.9 no tabs here\n")
    with pytest.raises(DataError, match=r"skirt_test_detect_all\.txt:3: expected"):
        load_fashion200k(root, splits=("test",), check_images=False)


def test_query_with_an_unknown_image_names_file_and_line(tmp_path):
    root = tmp_path / "f200k"
    shutil.copytree(FIXTURE, root)
    with (root / "test_queries.txt").open("a") as f:
        f.write(f"{COCKTAIL}/30000001/30000001_0.jpeg {COCKTAIL}/9/9_0.jpeg\n")
    with pytest.raises(
        DataError, match=r"test_queries\.txt:4: image .*9_0\.jpeg' is not in the test"
    ):
        load_fashion200k(root, splits=("test",), check_images=False)


def test_missing_image_names_the_query_line(tmp_path):
    root = _with_images(tmp_path)
    (root / COCKTAIL / "30000004" / "30000004_0.jpeg").unlink()
    with pytest.raises(
        DataError, match=r"test_queries\.txt:2: image .*30000004_0\.jpeg' not found"
    ):
        load_fashion200k(root, splits=("test",))


def test_label_line_without_a_caption_names_file_and_line(tmp_path):
    root = tmp_path / "f200k"
    shutil.copytree(FIXTURE, root)
    with (root / "labels" / "skirt_test_detect_all.txt").open("a") as f:
        f.write("women/skirts/maxi/1/1_0.jpeg\t0.9\t   \n")
    with pytest.raises(DataError, match=r"skirt_test_detect_all\.txt:3: .*caption"):
        load_fashion200k(root, splits=("test",), check_images=False)
