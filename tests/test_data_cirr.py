"""CIRR loader on real rc2 annotations (tests/fixtures/cirr: a subset) and stand-in images.

Every expected count is derived here from the fixture files with ``json`` directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from valfusion.data import CirrSplit, DataError, load_cirr, load_source

FIXTURES = Path(__file__).parent / "fixtures" / "cirr"


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _captions(split: str) -> list[dict]:
    return _json(FIXTURES / "captions" / f"cap.rc2.{split}.json")


def _image_split(split: str) -> dict[str, str]:
    return _json(FIXTURES / "image_splits" / f"split.rc2.{split}.json")


def make_cirr_root(root: Path) -> Path:
    """The fixture annotations plus an 8 x 8 stand-in PNG at every split file's relative path."""
    for sub in ("captions", "image_splits"):
        shutil.copytree(FIXTURES / sub, root / sub)
    for split in ("train", "val", "test1"):
        for i, relative in enumerate(_image_split(split).values()):
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(path)
    return root


@pytest.fixture(scope="module")
def cirr_root(tmp_path_factory) -> Path:
    return make_cirr_root(tmp_path_factory.mktemp("cirr"))


def _path(relative: str) -> str:
    return relative.removeprefix("./")


def test_val_split_follows_the_cirr_protocol(cirr_root):
    captions, image_split = _captions("val"), _image_split("val")
    data = load_cirr(cirr_root, splits=("test",), image_size=8)
    split = data.evaluation["val"]
    assert isinstance(split, CirrSplit) and data.protocol == "cirr" and data.train is None
    # Gallery = the whole image split; queries = every caption record.
    assert (len(split), len(split.gallery)) == (len(captions), len(image_split)) == (300, 327)
    assert set(split.gallery) == {_path(p) for p in image_split.values()}
    assert split.pairids == tuple(q["pairid"] for q in captions)
    for triplet, query, members in zip(split.triplets, captions, split.members):
        assert triplet.reference == _path(image_split[query["reference"]])
        assert triplet.targets == (_path(image_split[query["target_hard"]]),)  # target_hard only
        assert triplet.text == query["caption"].strip()
        assert [split.names[m] for m in members] == query["img_set"]["members"]
        assert len(members) == 6 and triplet.reference in members and triplet.target in members
    # Each query's reference is in the gallery, so evaluation removes it from the ranking.
    assert all(i >= 0 for i in split.reference_indices())
    assert data.metadata()["splits"]["val"]["gallery_size"] == len(image_split)


def test_test1_split_has_queries_without_targets_and_keeps_the_empty_caption(cirr_root, capsys):
    captions, image_split = _captions("test1"), _image_split("test1")
    data = load_source(f"cirr:{cirr_root}", splits=("test",), eval_split="test1", image_size=8)
    split = data.evaluation["test1"]
    assert (len(split), len(split.gallery)) == (len(captions), len(image_split)) == (301, 300)
    assert not split.has_targets and all(t.targets == () for t in split.triplets)
    # pairid 27098's released caption is a single space: kept (the server wants every pairid).
    empty = [q["pairid"] for q in captions if not q["caption"].strip()]
    assert empty == [27098]
    assert split.triplets[split.pairids.index(27098)].text == ""
    assert data.info["empty_captions_kept"] == 1
    assert "cap.rc2.test1.json" in capsys.readouterr().err


def test_train_captions_in_the_same_format_are_loaded(cirr_root):
    captions, image_split = _captions("train"), _image_split("train")
    data = load_cirr(cirr_root, image_size=8)
    assert data.train is not None and len(data.train) == len(captions) == 3
    assert [t.target for t in data.train.triplets] == [_path(image_split[q["target_hard"]]) for q in captions]
    assert set(data.evaluation) == {"val"}


def _edited(tmp_path: Path, split: str, edit) -> Path:
    root = make_cirr_root(tmp_path / "cirr")
    path = root / "captions" / f"cap.rc2.{split}.json"
    records = _json(path)
    edit(records)
    path.write_text(json.dumps(records, indent=1))
    return root


def test_an_image_id_outside_the_split_file_names_file_and_line(tmp_path):
    def edit(records):
        records[2]["target_hard"] = "dev-no-such-img0"

    root = _edited(tmp_path, "val", edit)
    with pytest.raises(DataError, match=r"cap\.rc2\.val\.json:\d+: target_hard 'dev-no-such-img0' is not in"):
        load_cirr(root, splits=("test",), check_images=False)


def test_a_duplicate_pairid_and_an_empty_val_caption_are_errors(tmp_path):
    def duplicate(records):
        records[3]["pairid"] = records[0]["pairid"]

    with pytest.raises(DataError, match="already used at"):
        load_cirr(_edited(tmp_path / "a", "val", duplicate), splits=("test",), check_images=False)

    def empty(records):
        records[1]["caption"] = "  "

    with pytest.raises(DataError, match=r"cap\.rc2\.val\.json:\d+: 'caption' is empty"):
        load_cirr(_edited(tmp_path / "b", "val", empty), splits=("test",), check_images=False)


def test_missing_and_outside_images_are_found_by_the_shared_checks(tmp_path):
    root = make_cirr_root(tmp_path / "cirr")
    first = _captions("val")[0]
    (root / _image_split("val")[first["reference"]]).unlink()
    with pytest.raises(DataError, match="not found"):
        load_cirr(root, splits=("test",), image_size=8)
    data = load_cirr(root, splits=("test",), image_size=8, drop_missing_images=True)
    split = data.evaluation["val"]
    # Every query using that image is dropped, and pairids and members stay aligned.
    kept = [q for q in _captions("val") if first["reference"] not in (q["reference"], q["target_hard"])]
    assert split.pairids == tuple(q["pairid"] for q in kept)
    assert len(split.members) == len(split.triplets) == len(kept)
    assert all(len(m) <= 6 for m in split.members)

    splits = root / "image_splits" / "split.rc2.val.json"
    entries = _json(splits)
    entries[first["reference"]] = "../outside.png"
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    splits.write_text(json.dumps(entries))
    with pytest.raises(DataError, match="outside"):
        load_cirr(root, splits=("test",), image_size=8)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="eval_split"):
        load_cirr(FIXTURES, eval_split="test2")
    with pytest.raises(ValueError, match="splits"):
        load_cirr(FIXTURES, splits=("val",))
