"""FashionIQ loader on the real val annotations (tests/fixtures/fashioniq) and stand-in images."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from valfusion.data import DataError, TripletDataset, load_fashioniq
from valfusion.data.fashioniq import read_fashioniq_tags

FIXTURES = Path(__file__).parent / "fixtures" / "fashioniq"
CATEGORIES = ("dress", "shirt", "toptee")


def _pairs(category: str) -> list[dict]:
    return json.loads((FIXTURES / "captions" / f"cap.{category}.val.json").read_text())


@pytest.fixture(scope="module")
def val_separate():
    return load_fashioniq(FIXTURES, "all", splits=("test",), check_images=False)


@pytest.fixture(scope="module")
def original_joined():
    return load_fashioniq(
        FIXTURES,
        "all",
        splits=("test",),
        protocol="original",
        caption_mode="joined",
        check_images=False,
    )


def _subset_root(
    tmp_path: Path, category: str = "dress", pairs: int = 30, suffix: str = ".jpg"
) -> Path:
    """A FashionIQ folder with the first ``pairs`` real pairs and stand-in images for them."""
    root = tmp_path / "fashioniq"
    (root / "captions").mkdir(parents=True)
    subset = _pairs(category)[:pairs]
    (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(subset, indent=2))
    shutil.copytree(FIXTURES / "tags", root / "tags")
    (root / "images").mkdir()
    for i, asin in enumerate(
        dict.fromkeys(a for p in subset for a in (p["candidate"], p["target"]))
    ):
        Image.new("RGB", (6, 6), (i % 256, 50, 100)).save(root / "images" / f"{asin}{suffix}")
    return root


def test_val_protocol_gallery_sizes(val_separate):
    sizes = {c: len(val_separate.evaluation[c].gallery) for c in CATEGORIES}
    assert sizes == {"dress": 2628, "shirt": 3089, "toptee": 2902}


def test_original_protocol_gallery_sizes(original_joined):
    sizes = {c: len(original_joined.evaluation[c].gallery) for c in CATEGORIES}
    assert sizes == {"dress": 3817, "shirt": 6346, "toptee": 5373}


def test_original_protocol_gallery_is_the_image_split_file(original_joined):
    split = json.loads((FIXTURES / "image_splits" / "split.shirt.val.json").read_text())
    assert list(original_joined.evaluation["shirt"].gallery) == split


def _empty_captions(category: str) -> int:
    return sum(not c.strip() for pair in _pairs(category) for c in pair["captions"])


def test_separate_captions_give_two_queries_per_pair_less_the_empty_ones(val_separate):
    assert {c: _empty_captions(c) for c in CATEGORIES} == {"dress": 0, "shirt": 1, "toptee": 2}
    for category in CATEGORIES:
        expected = 2 * len(_pairs(category)) - _empty_captions(category)
        assert len(val_separate.evaluation[category]) == expected


def test_empty_captions_of_the_real_files_are_dropped_and_counted(val_separate):
    assert val_separate.metadata()["empty_captions_dropped"] == 3
    assert all(t.text.strip() for s in val_separate.evaluation.values() for t in s.triplets)


def test_a_pair_with_one_empty_caption_keeps_a_query_for_the_other(val_separate, original_joined):
    pair = _pairs("shirt")[1928]  # the real record: captions ["", "is grey with a ..."]
    assert pair["captions"][0] == "" and pair["captions"][1].strip()
    for data in (val_separate, original_joined):
        texts = [
            t.text
            for t in data.evaluation["shirt"].triplets
            if (t.reference, t.target) == (pair["candidate"], pair["target"])
        ]
        assert texts == [pair["captions"][1].strip()]


def test_dropped_empty_captions_are_reported_with_their_line(tmp_path, capsys):
    root = tmp_path / "fashioniq"
    (root / "captions").mkdir(parents=True)
    subset = _pairs("toptee")[670:680]  # real pairs; pair 676 has an empty first caption
    (root / "captions" / "cap.toptee.val.json").write_text(json.dumps(subset, indent=2))
    data = load_fashioniq(root, "toptee", splits=("test",), check_images=False)
    assert len(data.evaluation["toptee"]) == 2 * 10 - 1
    err = capsys.readouterr().err
    # indented: pair i starts on line 2 + 8 i
    assert "dropped 1 empty caption" in err and "cap.toptee.val.json:50" in err


@pytest.mark.parametrize("caption_mode", ["separate", "joined"])
def test_a_pair_whose_captions_are_all_empty_names_file_and_line(tmp_path, caption_mode):
    root = tmp_path / "broken"
    (root / "captions").mkdir(parents=True)
    records = [
        {"target": "A", "candidate": "B", "captions": ["x", "y"]},
        {"target": "C", "candidate": "D", "captions": ["", " \t"]},
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"
    (root / "captions" / "cap.dress.val.json").write_text(text)
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json:3: every caption is empty"):
        load_fashioniq(
            root, "dress", splits=("test",), caption_mode=caption_mode, check_images=False
        )


def test_joined_captions_give_one_query_per_pair(original_joined):
    for category in CATEGORIES:
        assert len(original_joined.evaluation[category]) == len(_pairs(category))


def test_joined_text_is_both_captions_joined_with_and(original_joined):
    pair = _pairs("toptee")[5]
    triplet = original_joined.evaluation["toptee"].triplets[5]
    assert triplet.text == f"{pair['captions'][0].strip()} and {pair['captions'][1].strip()}"
    assert (triplet.reference, triplet.targets) == (pair["candidate"], (pair["target"],))


def test_separate_texts_are_the_two_captions_of_the_pair_in_order(val_separate):
    pair = _pairs("dress")[7]
    first, second = val_separate.evaluation["dress"].triplets[14:16]
    assert [first.text, second.text] == [c.strip() for c in pair["captions"]]
    assert first.reference == second.reference == pair["candidate"]


def test_caption_mode_and_protocol_are_recorded(val_separate, original_joined):
    assert (val_separate.metadata()["protocol"], val_separate.metadata()["caption_mode"]) == (
        "val",
        "separate",
    )
    assert (original_joined.metadata()["protocol"], original_joined.metadata()["caption_mode"]) == (
        "original",
        "joined",
    )


def test_one_category_gives_one_evaluation_split():
    data = load_fashioniq(FIXTURES, "shirt", splits=("test",), check_images=False)
    assert list(data.evaluation) == ["shirt"] and data.name == "fashioniq-shirt"


def test_tags_become_the_words_of_each_entry_once_in_order():
    raw = json.loads((FIXTURES / "tags" / "asin2attr.dress.val.json").read_text())
    tags = read_fashioniq_tags(FIXTURES / "tags" / "asin2attr.dress.val.json")
    assert tags.keys() == raw.keys()
    for asin, groups in raw.items():
        words = []
        for group in groups:
            words += [w for w in group if w not in words]
        assert tags[asin] == " ".join(words)


def test_loader_with_stand_in_images_reads_every_query(tmp_path):
    root = _subset_root(tmp_path)
    data = load_fashioniq(root, "dress", splits=("test",), image_size=6)
    assert len(data.evaluation["dress"]) == 60
    assert data.evaluation["dress"].images(
        data.evaluation["dress"].triplets[0].reference
    ).shape == (3, 6, 6)


def test_loader_finds_png_images_too(tmp_path):
    root = _subset_root(tmp_path, suffix=".png")
    assert len(load_fashioniq(root, "dress", splits=("test",)).evaluation["dress"]) == 60


def test_target_side_information_comes_from_the_tags(tmp_path):
    root = _subset_root(tmp_path)
    split = load_fashioniq(root, "dress", splits=("test",), image_size=6).evaluation["dress"]
    raw = json.loads((root / "tags" / "asin2attr.dress.val.json").read_text())
    tagged = [t.target in raw for t in split.triplets[:20]]
    assert any(tagged) and not all(tagged)  # the real files leave some images untagged
    for i, triplet in enumerate(split.triplets[:20]):
        sample = TripletDataset(split)[i]
        if triplet.target in raw:
            assert all(phrase in sample.side_info for g in raw[triplet.target] for phrase in g)
        else:
            assert sample.side_info is None


def test_missing_image_is_an_error_naming_the_pair(tmp_path):
    root = _subset_root(tmp_path)
    pair = _pairs("dress")[3]
    (root / "images" / f"{pair['target']}.jpg").unlink()
    # the subset file is indented, so each pair starts on its own line: pair 3 starts at line 2 + 3 * 8
    with pytest.raises(
        DataError, match=rf"cap\.dress\.val\.json:26: image '{pair['target']}' not found"
    ):
        load_fashioniq(root, "dress", splits=("test",))


def test_drop_missing_images_drops_every_query_that_uses_them(tmp_path):
    root = _subset_root(tmp_path)
    pairs = _pairs("dress")[:30]
    gone = {pairs[0]["candidate"], pairs[10]["target"]}
    for asin in gone:
        (root / "images" / f"{asin}.jpg").unlink()
    data = load_fashioniq(root, "dress", splits=("test",), drop_missing_images=True, image_size=6)
    affected = sum(p["candidate"] in gone or p["target"] in gone for p in pairs)
    split = data.evaluation["dress"]
    assert split.dropped_triplets == 2 * affected and len(split) == 2 * (30 - affected)
    assert split.missing_images == 2


def test_drop_missing_images_reports_the_gallery_size_of_the_remaining_queries(tmp_path):
    root = _subset_root(tmp_path)
    pairs = _pairs("dress")[:30]
    (root / "images" / f"{pairs[0]['candidate']}.jpg").unlink()
    data = load_fashioniq(root, "dress", splits=("test",), drop_missing_images=True)
    kept = [p for p in pairs if pairs[0]["candidate"] not in (p["candidate"], p["target"])]
    expected = len({a for p in kept for a in (p["candidate"], p["target"])})
    assert data.metadata()["splits"]["dress"]["gallery_size"] == expected


def test_record_without_captions_names_file_and_line(tmp_path):
    root = tmp_path / "broken"
    (root / "captions").mkdir(parents=True)
    records = [
        {"target": "A", "candidate": "B", "captions": ["x", "y"]},
        {"target": "C", "candidate": "D"},
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"
    (root / "captions" / "cap.dress.val.json").write_text(text)
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json:3: missing key 'captions'"):
        load_fashioniq(root, "dress", splits=("test",), check_images=False)


def test_compact_file_sources_name_the_element(val_separate):
    assert (
        val_separate.evaluation["dress"]
        .triplets[9]
        .source.endswith("cap.dress.val.json:1 (element 4)")
    )


def test_missing_training_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"cap\.dress\.train\.json: file not found"):
        load_fashioniq(FIXTURES, "dress", check_images=False)


@pytest.mark.parametrize(
    ("option", "value"), [("category", "shoes"), ("protocol", "all"), ("caption_mode", "both")]
)
def test_bad_choices_raise_value_error_naming_the_option(option, value):
    kwargs = {"category": "dress", option: value}
    with pytest.raises(ValueError, match=option):
        load_fashioniq(FIXTURES, splits=("test",), check_images=False, **kwargs)


def test_train_split_merges_categories_and_their_tags(tmp_path):
    root = _subset_root(tmp_path, pairs=4)
    for category in ("shirt",):
        subset = _pairs(category)[:3]
        (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(subset))
        for asin in {a for p in subset for a in (p["candidate"], p["target"])}:
            Image.new("RGB", (6, 6)).save(root / "images" / f"{asin}.jpg")
    for category in ("dress", "shirt"):  # train files: the val pairs under the train name
        shutil.copy(
            root / "captions" / f"cap.{category}.val.json",
            root / "captions" / f"cap.{category}.train.json",
        )
    (root / "captions" / "cap.toptee.val.json").write_text(json.dumps(_pairs("toptee")[:1]))
    shutil.copy(
        root / "captions" / "cap.toptee.val.json", root / "captions" / "cap.toptee.train.json"
    )
    for asin in {a for p in _pairs("toptee")[:1] for a in (p["candidate"], p["target"])}:
        Image.new("RGB", (6, 6)).save(root / "images" / f"{asin}.jpg")
    data = load_fashioniq(root, "all", eval_split="val")
    assert len(data.train) == 2 * (4 + 3 + 1)
    assert set(data.evaluation) == set(CATEGORIES)
    assert torch.is_tensor(TripletDataset(data.train)[0].reference)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"category": "shoes"}, "category: expected one of ('dress', 'shirt', 'toptee', 'all')"),
        ({"protocol": "full"}, "protocol: expected one of ('val', 'original')"),
        ({"caption_mode": "both"}, "caption_mode: expected one of ('separate', 'joined')"),
    ],
)
def test_an_unknown_option_is_refused_naming_it_and_its_choices(tmp_path, option, message):
    (value,) = option.values()
    with pytest.raises(ValueError, match=f"^{re.escape(f'{message}, got {value!r}')}$"):
        load_fashioniq(tmp_path / "absent", **option)
