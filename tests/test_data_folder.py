"""The generic folder format: round trip, every bad-data case with its file:line, dropping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from valfusion.data import (
    DataError,
    GalleryDataset,
    QueryDataset,
    Triplet,
    TripletDataset,
    collate_queries,
    collate_triplets,
    load_folder,
    write_folder,
)
from valfusion.data.images import IMAGENET_MEAN, IMAGENET_STD


def _image(seed: int, size: int = 8) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


TRAIN = [
    Triplet("img/a.png", "make it red", ("img/b.png",)),
    Triplet("img/b.png", "add a stripe", ("img/c.png",)),
]
TEST = [
    Triplet("img/c.png", "remove the stripe", ("img/d.png", "img/e.png")),
    Triplet("img/d.png", "make it blue", ("img/a.png",)),
]
IMAGES = {f"img/{name}.png": _image(i) for i, name in enumerate("abcde")}


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _triplet_line(reference: str, text: str, target) -> str:
    return json.dumps({"reference": reference, "text": text, "target": target})


def _folder(tmp_path: Path, **kwargs) -> Path:
    options = {"images": IMAGES, "train": TRAIN, "test": TEST}
    options.update(kwargs)
    return write_folder(tmp_path / "data", **options)


def _content(triplets) -> list[tuple]:
    return [(t.reference, t.text, t.targets) for t in triplets]


def test_round_trip_keeps_triplets(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    assert _content(data.train.triplets) == _content(TRAIN)
    assert _content(data.test.triplets) == _content(TEST)


def test_round_trip_keeps_pixels(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    for image_id, pixels in IMAGES.items():
        assert torch.allclose(data.test.images(image_id), _normalised(pixels))


def test_round_trip_keeps_gallery_and_side_information(tmp_path):
    gallery = ["img/e.png", "img/d.png", "img/a.png", "img/c.png"]
    side_info = {"img/a.png": "a red thing", "img/e.png": "a striped thing"}
    data = load_folder(_folder(tmp_path, gallery=gallery, side_info=side_info), image_size=8)
    assert list(data.test.gallery) == gallery
    assert dict(data.test.side_info) == side_info
    assert data.protocol == "gallery.txt"


def test_round_trip_sources_name_the_file_and_line(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    assert data.test.triplets[1].source == f"{tmp_path / 'data' / 'test.jsonl'}:2"


def test_default_gallery_is_the_union_of_test_references_and_targets(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    expected = {t.reference for t in TEST} | {x for t in TEST for x in t.targets}
    assert set(data.test.gallery) == expected and len(data.test.gallery) == len(expected)
    assert data.protocol == "val"


def test_images_are_resized_to_image_size(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=(4, 6))
    assert data.train.images("img/a.png").shape == (3, 4, 6)


def test_malformed_json_line_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    _write_lines(
        folder / "train.jsonl",
        [_triplet_line("img/a.png", "x", "img/b.png"), '{"reference": "img/a.png",'],
    )
    with pytest.raises(DataError, match=r"train\.jsonl:2: malformed JSON"):
        load_folder(folder)


def test_line_that_is_not_an_object_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    _write_lines(folder / "train.jsonl", ['["img/a.png", "x", "img/b.png"]'])
    with pytest.raises(DataError, match=r"train\.jsonl:1: expected a JSON object"):
        load_folder(folder)


def test_missing_key_names_file_line_and_key(tmp_path):
    folder = _folder(tmp_path)
    _write_lines(
        folder / "test.jsonl", ["", json.dumps({"reference": "img/a.png", "target": "img/b.png"})]
    )
    with pytest.raises(DataError, match=r"test\.jsonl:2: missing key 'text'"):
        load_folder(folder)


def test_empty_target_list_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    _write_lines(folder / "test.jsonl", [_triplet_line("img/a.png", "x", [])])
    with pytest.raises(DataError, match=r"test\.jsonl:1: 'target' must be"):
        load_folder(folder)


def test_absolute_path_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    _write_lines(
        folder / "train.jsonl", [_triplet_line(str(folder / "img/a.png"), "x", "img/b.png")]
    )
    with pytest.raises(DataError, match=r"train\.jsonl:1: 'reference' must be relative"):
        load_folder(folder)


def test_empty_split_names_the_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "train.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl: split 'train' is empty"):
        load_folder(folder)


def test_missing_split_file_names_the_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "train.jsonl").unlink()
    with pytest.raises(DataError, match=r"train\.jsonl: file not found"):
        load_folder(folder)


def test_only_requested_splits_are_read(tmp_path):
    folder = _folder(tmp_path)
    (folder / "train.jsonl").unlink()
    data = load_folder(folder, splits=("test",))
    assert data.train is None and len(data.test) == len(TEST)


def test_missing_image_names_file_line_and_image(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    with pytest.raises(DataError, match=r"train\.jsonl:2: image 'img/c\.png' not found"):
        load_folder(folder)


def test_missing_gallery_image_names_gallery_line(tmp_path):
    folder = _folder(
        tmp_path, gallery=["img/a.png", "img/z.png", "img/c.png", "img/d.png", "img/e.png"]
    )
    with pytest.raises(DataError, match=r"gallery\.txt:2: image 'img/z\.png' not found"):
        load_folder(folder, splits=("test",))


def test_target_missing_from_gallery_names_file_and_line(tmp_path):
    folder = _folder(tmp_path, gallery=["img/c.png", "img/d.png", "img/e.png"])
    with pytest.raises(
        DataError, match=r"test\.jsonl:2: target 'img/a\.png' is not in the gallery"
    ):
        load_folder(folder, splits=("test",))


def test_malformed_side_information_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    (folder / "side_info.json").write_text(
        '{\n "img/a.png": "red",\n "img/b.png": 3\n}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"side_info\.json:3: side information of 'img/b\.png'"):
        load_folder(folder)


def test_missing_images_are_not_checked_when_checking_is_off(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    data = load_folder(folder, check_images=False)
    with pytest.raises(DataError, match=r"img/c\.png"):
        data.train.images("img/c.png")


def test_drop_missing_images_drops_and_counts_the_triplets_that_need_them(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    data = load_folder(folder, image_size=8, drop_missing_images=True)
    # train: the triplet with target c goes; test: the triplet with reference c goes
    assert _content(data.train.triplets) == _content(TRAIN[:1])
    assert _content(data.test.triplets) == _content(TEST[1:])
    assert (data.train.dropped_triplets, data.test.dropped_triplets) == (1, 1)
    assert (data.train.missing_images, data.test.missing_images) == (1, 1)


def test_drop_missing_images_recomputes_the_val_gallery_from_the_remaining_queries(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    data = load_folder(folder, image_size=8, drop_missing_images=True)
    assert set(data.test.gallery) == {"img/d.png", "img/a.png"}


def test_drop_missing_images_removes_missing_targets_among_several(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/e.png").unlink()
    data = load_folder(folder, image_size=8, drop_missing_images=True, splits=("test",))
    assert data.test.triplets[0].targets == ("img/d.png",)
    assert data.test.dropped_triplets == 0 and data.test.missing_images == 1


def test_drop_missing_images_prints_and_records_the_counts(tmp_path, capsys):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    data = load_folder(folder, image_size=8, drop_missing_images=True)
    printed = capsys.readouterr().err
    assert "split 'test': dropped 1 of 2 triplets" in printed and "gallery now 2 images" in printed
    assert data.metadata()["splits"]["test"] == {
        "num_triplets": 1,
        "gallery_size": 2,
        "dropped_triplets": 1,
        "missing_images": 1,
        "unreadable_images": 0,
    }


def test_dropping_every_triplet_is_an_error(tmp_path):
    folder = _folder(tmp_path)
    for name in ("img/a.png", "img/b.png", "img/c.png"):
        (folder / name).unlink()
    with pytest.raises(DataError, match=r"train\.jsonl: split 'train' is empty after dropping 2"):
        load_folder(folder, drop_missing_images=True)


def test_triplet_dataset_yields_reference_text_target_and_target_side_information(tmp_path):
    data = load_folder(_folder(tmp_path, side_info={"img/b.png": "a red thing"}), image_size=8)
    sample = TripletDataset(data.train)[0]
    assert torch.allclose(sample.reference, _normalised(IMAGES["img/a.png"]))
    assert torch.allclose(sample.target, _normalised(IMAGES["img/b.png"]))
    assert (sample.text, sample.side_info) == ("make it red", "a red thing")
    assert TripletDataset(data.train)[1].side_info is None


def test_collated_triplets_stack_images_and_keep_texts_as_lists(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    batch = next(
        iter(DataLoader(TripletDataset(data.train), batch_size=2, collate_fn=collate_triplets))
    )
    assert batch.reference.shape == (2, 3, 8, 8) and batch.target.shape == (2, 3, 8, 8)
    assert batch.text == ["make it red", "add a stripe"] and batch.side_info == [None, None]
    assert batch.index.tolist() == [0, 1]


def test_query_and_gallery_datasets_follow_split_order(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    queries = next(
        iter(DataLoader(QueryDataset(data.test), batch_size=2, collate_fn=collate_queries))
    )
    gallery = next(iter(DataLoader(GalleryDataset(data.test), batch_size=4)))
    assert queries.text == [t.text for t in TEST]
    assert torch.allclose(queries.reference[0], _normalised(IMAGES["img/c.png"]))
    expected = torch.stack([_normalised(IMAGES[g]) for g in data.test.gallery])
    assert torch.allclose(gallery, expected)


def test_target_and_reference_indices_point_into_the_gallery(tmp_path):
    data = load_folder(_folder(tmp_path), image_size=8)
    gallery = data.test.gallery
    assert [[gallery[i] for i in idx] for idx in data.test.target_indices()] == [
        list(t.targets) for t in TEST
    ]
    assert [gallery[i] for i in data.test.reference_indices()] == [t.reference for t in TEST]


def test_any_pillow_format_is_read(tmp_path):
    folder = tmp_path / "jpeg"
    folder.mkdir()
    Image.new("L", (5, 5), 200).save(folder / "a.jpg")
    Image.new("RGBA", (5, 5), (10, 20, 30, 128)).save(folder / "b.png")
    _write_lines(folder / "test.jsonl", [_triplet_line("a.jpg", "x", "b.png")])
    data = load_folder(folder, splits=("test",), image_size=5)
    assert torch.allclose(
        data.test.images("a.jpg"), _normalised(torch.full((3, 5, 5), 200)), atol=0.05
    )
    assert torch.allclose(
        data.test.images("b.png"),
        _normalised(torch.tensor([10, 20, 30]).view(3, 1, 1).expand(3, 5, 5)),
    )


def test_metadata_records_the_image_size(tmp_path):
    assert load_folder(_folder(tmp_path), image_size=(4, 6)).metadata()["image_size"] == [4, 6]


def test_a_line_separator_inside_a_json_string_does_not_split_the_line(tmp_path):
    folder = _folder(tmp_path)
    raw = {"reference": "img/a.png", "text": "red\u2028now", "target": "img/b.png"}
    _write_lines(folder / "train.jsonl", [json.dumps(raw, ensure_ascii=False)])
    assert "\u2028" in (folder / "train.jsonl").read_text(encoding="utf-8")
    assert load_folder(folder, splits=("train",)).train.triplets[0].text == "red\u2028now"


@pytest.mark.parametrize("text", ["", "   ", "\t \u3000"])
def test_empty_or_blank_text_names_file_and_line(tmp_path, text):
    folder = _folder(tmp_path)
    _write_lines(
        folder / "train.jsonl",
        [_triplet_line("img/a.png", "make it red", "img/b.png"), _triplet_line("img/b.png", text, "img/c.png")],
    )
    with pytest.raises(DataError, match=r"train\.jsonl:2: 'text' is empty or only whitespace"):
        load_folder(folder, check_images=False)


def test_training_on_empty_captions_stops_before_training_with_exit_status_2(tmp_path, capsys):
    from valfusion.cli import main

    blank = [Triplet(t.reference, "", t.targets) for t in TRAIN]
    folder = _folder(tmp_path, train=blank)
    run_dir = tmp_path / "run"
    code = main([
        "train", "--data", str(folder), "--out", str(run_dir), "--steps", "1", "--batch-size", "2",
        "--image-size", "16", "--channels", "4,8,8", "--no-progress", "--device", "cpu",
    ])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{folder / 'train.jsonl'}:1: 'text' is empty" in err
    assert not (run_dir / "model.safetensors").exists()
