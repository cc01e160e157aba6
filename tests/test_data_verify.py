"""Images verified before training, and image paths confined to their data folder.

Every image a split uses is decoded before training (a truncated, empty, corrupt,
non-image or oversized file is an error naming the annotation's file:line, all of them
listed); decoding runs in threads and is cached by (resolved path, size, mtime_ns). No
image is read, or written, outside its folder, and two names of one file are one image.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from valfusion.cli import main
from valfusion.data import (
    MAX_IMAGE_PIXELS,
    DataError,
    ImageFiles,
    SyntheticBenchmark,
    Triplet,
    image_cache_dir,
    load_fashion200k,
    load_fashioniq,
    load_folder,
    load_image,
    load_shoes,
    verify_images,
    write_folder,
)
from valfusion.data.validation import MAX_LISTED

TRAIN = [
    Triplet("img/a.png", "make it red", ("img/b.png",)),
    Triplet("img/b.png", "add a stripe", ("img/c.png",)),
]
TEST = [
    Triplet("img/c.png", "remove the stripe", ("img/d.png", "img/e.png")),
    Triplet("img/d.png", "make it blue", ("img/a.png",)),
]


def _pixels(seed: int, size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)


def _folder(tmp_path: Path, **kwargs) -> Path:
    options = {
        "images": {f"img/{n}.png": _pixels(i) for i, n in enumerate("abcde")},
        "train": TRAIN,
        "test": TEST,
    }
    options.update(kwargs)
    return write_folder(tmp_path / "data", **options)


def _encoded(file_format: str, size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, file_format)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a header claiming ``width x height`` pixels (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


BROKEN = {
    "empty": b"",
    "not an image": b"<html>404 Not Found</html>\n",
    "truncated PNG": _encoded("PNG")[:300],
    "truncated JPEG": _encoded("JPEG")[: len(_encoded("JPEG")) // 2],
    "corrupt PNG": (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:])(_encoded("PNG")),
}


# ------------------------------------------------------------------ fault 1: images decoded


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_training_image_is_an_error_naming_its_line(tmp_path, kind):
    folder = _folder(tmp_path)
    (folder / "img/c.png").write_bytes(BROKEN[kind])
    with pytest.raises(DataError, match=r"train\.jsonl:2: image 'img/c\.png' cannot be used: "):
        load_folder(folder)


def test_the_error_says_why_the_file_cannot_be_read(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").write_bytes(BROKEN["truncated PNG"])
    with pytest.raises(DataError, match=r"img/c\.png: cannot read image \(image file is truncated\)"):
        load_folder(folder)


def test_a_broken_image_only_in_the_test_gallery_names_the_gallery_line(tmp_path):
    gallery = ["img/a.png", "img/c.png", "img/d.png", "img/e.png", "img/z.png"]
    images = {f"img/{n}.png": _pixels(i) for i, n in enumerate("abcdez")}
    folder = _folder(tmp_path, images=images, gallery=gallery)
    (folder / "img/z.png").write_bytes(BROKEN["truncated JPEG"])
    with pytest.raises(DataError, match=r"gallery\.txt:5: image 'img/z\.png' cannot be used"):
        load_folder(folder, splits=("test",))


@pytest.mark.parametrize("width, height", [(30000, 30000), (10000, 10000), (9000, 9000)])
def test_a_huge_image_is_refused_by_its_size_without_pillow_errors_or_warnings(
    tmp_path, width, height
):
    # 30000^2 is past Pillow's DecompressionBombError, 10000^2 past its warning, 9000^2 only ours
    folder = _folder(tmp_path)
    (folder / "img/c.png").write_bytes(_png_header(width, height))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=rf"maximum of {MAX_IMAGE_PIXELS:,} pixels") as raised:
            load_folder(folder)
        with pytest.raises(DataError, match=rf"maximum of {MAX_IMAGE_PIXELS:,} pixels"):
            load_image(folder / "img/c.png")
    assert "train.jsonl:2: image 'img/c.png'" in str(raised.value)
    assert [str(w.message) for w in caught] == []


def test_the_pixel_limit_is_width_times_height(tmp_path):
    Image.new("RGB", (6, 5)).save(tmp_path / "a.png")
    assert verify_images([tmp_path / "a.png"], max_pixels=30) == {}
    assert "6 x 5 = 30 pixels" in verify_images([tmp_path / "a.png"], max_pixels=29)[tmp_path / "a.png"]


def test_every_bad_image_is_listed_with_its_line(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/b.png").unlink()
    (folder / "img/c.png").write_bytes(b"")
    (folder / "img/e.png").write_bytes(BROKEN["corrupt PNG"])
    with pytest.raises(DataError) as raised:
        load_folder(folder)
    message = str(raised.value)
    # train uses b (line 1 target) and c (line 2 target); the test split is not reached
    assert re.search(r"train\.jsonl:1: image 'img/b\.png' not found", message)
    assert re.search(r"train\.jsonl:2: image 'img/c\.png' cannot be used", message)
    assert "2 of its 3 images are missing (1) or unreadable (1)" in message
    with pytest.raises(DataError) as raised:
        load_folder(folder, splits=("test",))
    message = str(raised.value)
    assert re.search(r"test\.jsonl:1: image 'img/c\.png' cannot be used", message)
    assert re.search(r"test\.jsonl:1: image 'img/e\.png' cannot be used", message)


def test_a_long_list_of_bad_images_is_cut_and_counted(tmp_path):
    count = MAX_LISTED + 5
    images = {f"img/{i}.png": _pixels(i) for i in range(count + 1)}
    train = [Triplet(f"img/{i}.png", "x", (f"img/{i + 1}.png",)) for i in range(count)]
    folder = write_folder(tmp_path / "data", images=images, train=train)
    for i in range(1, count + 1):
        (folder / f"img/{i}.png").write_bytes(b"")
    with pytest.raises(DataError) as raised:
        load_folder(folder, splits=("train",))
    message = str(raised.value)
    assert message.count("cannot be used") == MAX_LISTED
    assert "... and 5 more" in message
    assert f"{count} of its {count + 1} images are missing (0) or unreadable ({count})" in message


def test_drop_missing_images_also_drops_unreadable_ones_and_counts_them(tmp_path, capsys):
    folder = _folder(tmp_path)
    (folder / "img/c.png").write_bytes(BROKEN["truncated PNG"])
    data = load_folder(folder, image_size=8, drop_missing_images=True)
    assert [t.reference for t in data.train.triplets] == ["img/a.png"]
    assert [t.reference for t in data.test.triplets] == ["img/d.png"]
    assert data.metadata()["splits"]["test"] == {
        "num_triplets": 1,
        "gallery_size": 2,
        "dropped_triplets": 1,
        "missing_images": 1,
        "unreadable_images": 1,
    }
    assert "for 1 missing or unreadable images (1 unreadable)" in capsys.readouterr().err


def test_train_stops_before_training_when_a_gallery_image_is_broken(tmp_path, capsys):
    folder = _folder(tmp_path, images={f"img/{n}.png": _pixels(i, 32) for i, n in enumerate("abcde")})
    (folder / "img/e.png").write_bytes(BROKEN["truncated PNG"])  # a test target only
    run = tmp_path / "run"
    code = main([
        "train", "--data", str(folder), "--out", str(run), "--steps", "2", "--batch-size", "2",
        "--image-size", "32", "--channels", "4,8,8", "--word-dim", "8", "--text-hidden-dim", "8",
        "--text-dim", "8", "--no-progress", "--device", "cpu",
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "test.jsonl:1: image 'img/e.png' cannot be used" in err
    assert not run.exists() or not any(run.rglob("*.pt"))  # nothing was trained


# ------------------------------------------------------------------ fault 1: fast and cached


def _good(path: Path, size: int = 8) -> Path:
    Image.new("RGB", (size, size), (10, 20, 30)).save(path)
    return path


def _garbage_with_the_same_stamp(path: Path) -> None:
    """Replace the bytes of ``path`` by garbage of the same length, keeping its mtime_ns."""
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_unchanged_file_is_not_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    path = _good(tmp_path / "a.png")
    assert verify_images([path]) == {}
    _garbage_with_the_same_stamp(path)
    assert verify_images([path]) == {}  # same path, size and mtime_ns: the cached verdict
    assert "cannot read image" in verify_images([path], cache=False)[path]


def test_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    path = _good(tmp_path / "a.png")
    assert verify_images([path]) == {}
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert "cannot read image" in verify_images([path])[path]


def test_the_cache_records_resolved_path_size_mtime_and_dimensions(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    path = _good(tmp_path / "a.png", size=7)
    (tmp_path / "link.png").symlink_to(path)
    verify_images([tmp_path / "link.png"])
    stat = path.stat()
    cached = json.loads((image_cache_dir() / "verified-images.json").read_text())
    assert cached["images"] == {str(path.resolve()): [stat.st_size, stat.st_mtime_ns, 7, 7]}


def test_a_broken_file_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bad.png").write_bytes(b"")
    assert verify_images([tmp_path / "bad.png"]) != {}
    assert not (tmp_path / "cache" / "verified-images.json").exists()


def test_cached_dimensions_are_held_to_the_current_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    path = _good(tmp_path / "a.png", size=8)
    assert verify_images([path]) == {}
    _garbage_with_the_same_stamp(path)  # from here only the cached 8 x 8 can say anything
    assert "8 x 8 = 64 pixels" in verify_images([path], max_pixels=63)[path]


def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "verified-images.json").write_text("{not json")
    path = _good(tmp_path / "a.png")
    assert verify_images([path]) == {}
    cached = json.loads((tmp_path / "cache" / "verified-images.json").read_text())
    assert list(cached["images"]) == [str(path.resolve())]


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert image_cache_dir() is None
    path = _good(tmp_path / "a.png")
    assert verify_images([path]) == {}
    _garbage_with_the_same_stamp(path)
    assert "cannot read image" in verify_images([path])[path]
    assert not (tmp_path / "home").exists()


def test_the_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("VALFUSION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache_dir() == tmp_path / "xdg" / "valfusion"


def test_loading_a_folder_twice_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    folder = _folder(tmp_path)
    load_folder(folder)
    _garbage_with_the_same_stamp(folder / "img/c.png")
    load_folder(folder)  # nothing unchanged is decoded again
    monkeypatch.setenv("VALFUSION_CACHE_DIR", "off")
    with pytest.raises(DataError, match=r"img/c\.png' cannot be used"):
        load_folder(folder)


def test_threads_find_what_one_thread_finds(tmp_path):
    paths = []
    for i in range(24):
        path = tmp_path / f"{i}.png"
        path.write_bytes(list(BROKEN.values())[i % 5] if i % 3 == 0 else _encoded("PNG", (9, 7)))
        paths.append(path)
    one = verify_images(paths, workers=1, cache=False)
    many = verify_images(paths, workers=6, cache=False)
    assert one == many and set(one) == {p for i, p in enumerate(paths) if i % 3 == 0}


@pytest.mark.parametrize("name, value", [("max_pixels", 0), ("workers", -1), ("workers", 1.5)])
def test_bad_verification_arguments_are_named(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        verify_images([tmp_path / "a.png"], **{name: value})


# ------------------------------------------------------------------ fault 3: in-memory images


def test_the_synthetic_benchmark_renders_nothing_and_caches_nothing_when_built(tmp_path, monkeypatch):
    monkeypatch.setenv("VALFUSION_CACHE_DIR", str(tmp_path / "cache"))
    bench = SyntheticBenchmark(num_train=16, num_test=8, num_distractors=8, image_size=24)
    data = bench.data(("train", "test"))
    # SyntheticImages renders in chunks on first use; checking a split must not use any
    assert data.train.images._chunks == {} and data.test.images._chunks == {}
    assert not (tmp_path / "cache").exists()
    assert data.train.images(data.train.triplets[0].reference).shape == (3, 24, 24)


# ------------------------------------------------------------------ fault 2: confined paths


@pytest.mark.parametrize("escape", ["../outside.png", "img/../../outside.png", "../../../../etc/passwd"])
def test_a_path_climbing_out_of_the_folder_is_refused_with_its_line(tmp_path, escape):
    folder = _folder(tmp_path)
    _good(tmp_path / "outside.png")
    lines = (folder / "test.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"reference": "img/d.png", "text": "x", "target": escape})
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: 'target' must be relative to the folder and stay inside it"):
        load_folder(folder, splits=("test",), check_images=False)


def test_a_symbolic_link_out_of_the_folder_is_refused_with_its_line(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    (folder / "img/c.png").symlink_to(_good(tmp_path / "outside.png"))
    with pytest.raises(DataError, match=r"train\.jsonl:2: image 'img/c\.png' is .*outside\.png, outside the image folder"):
        load_folder(folder)


def test_an_outside_path_is_refused_even_with_drop_missing_images(tmp_path):
    folder = _folder(tmp_path)
    (folder / "img/c.png").unlink()
    (folder / "img/c.png").symlink_to(_good(tmp_path / "outside.png"))
    with pytest.raises(DataError, match="outside the image folder"):
        load_folder(folder, drop_missing_images=True)


@pytest.mark.parametrize("image_id", ["../outside.png", "sub/../../outside.png", "link.png"])
def test_image_files_never_read_outside_their_root(tmp_path, image_id):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link.png").symlink_to(_good(tmp_path / "outside.png"))
    files = ImageFiles(root, image_size=4)
    assert image_id not in files
    with pytest.raises(DataError, match="outside the image folder"):
        files(image_id)
    with pytest.raises(DataError, match="outside the image folder"):
        files.resolve(image_id)


def test_an_absolute_image_id_is_refused(tmp_path):
    files = ImageFiles(tmp_path / "root", image_size=4)
    absolute = str(_good(tmp_path / "outside.png"))
    assert absolute not in files
    with pytest.raises(DataError, match="outside the image folder"):
        files(absolute)


def test_a_link_to_a_file_inside_the_root_is_read(tmp_path):
    (tmp_path / "root" / "all").mkdir(parents=True)
    _good(tmp_path / "root" / "all" / "a.png")
    (tmp_path / "root" / "a.png").symlink_to(tmp_path / "root" / "all" / "a.png")
    assert ImageFiles(tmp_path / "root", image_size=4)("a.png").shape == (3, 4, 4)


def test_two_spellings_of_one_file_are_one_gallery_item(tmp_path):
    folder = _folder(tmp_path)
    lines = (folder / "test.jsonl").read_text().splitlines()
    lines.append(json.dumps({"reference": "img/../img/a.png", "text": "x", "target": "img/./b.png"}))
    lines.append(json.dumps({"reference": "img/b.png", "text": "y", "target": "img/a.png"}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    data = load_folder(folder, splits=("test",))
    assert sorted(data.test.gallery) == [f"img/{n}.png" for n in "abcde"]
    assert data.test.triplets[2].reference == "img/a.png"
    assert data.test.triplets[2].targets == ("img/b.png",)


def test_a_link_and_its_target_are_one_gallery_item(tmp_path, capsys):
    folder = _folder(tmp_path, gallery=["img/a.png", "img/c.png", "img/d.png", "img/e.png", "img/f.png"])
    (folder / "img/f.png").symlink_to(folder / "img/a.png")
    lines = (folder / "test.jsonl").read_text().splitlines()
    lines.append(json.dumps({"reference": "img/c.png", "text": "x", "target": "img/f.png"}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "side_info.json").write_text(json.dumps({"img/f.png": "a red thing"}))
    split = load_folder(folder, splits=("test",)).test
    assert list(split.gallery) == ["img/a.png", "img/c.png", "img/d.png", "img/e.png"]
    assert split.triplets[2].targets == ("img/a.png",)
    assert dict(split.side_info) == {"img/a.png": "a red thing"}
    assert "'img/f.png' is 'img/a.png'" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["../x.png", "img/../../x.png", "ABSOLUTE"])
def test_write_folder_refuses_to_write_outside_its_folder(tmp_path, key):
    key = str(tmp_path / "x.png") if key == "ABSOLUTE" else key
    with pytest.raises(ValueError, match=r"^images: "):
        write_folder(tmp_path / "data" / "inner", images={"a.png": _pixels(0), key: _pixels(1)})
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "data" / "x.png").exists()
    assert not (tmp_path / "data" / "inner" / "a.png").exists()  # nothing written at all


def test_write_folder_refuses_a_symbolic_link_out_of_its_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "img").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"images: 'img/a\.png' would be written to .*elsewhere"):
        write_folder(tmp_path / "data", images={"img/a.png": _pixels(0)})
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_write_folder_normalises_paths_and_refuses_two_names_for_one_file(tmp_path):
    write_folder(tmp_path / "data", images={"img/./a.png": _pixels(0)})
    assert (tmp_path / "data" / "img" / "a.png").is_file()
    with pytest.raises(ValueError, match=r"images: 'img/\.\./a\.png' and 'a\.png' name the same file"):
        write_folder(tmp_path / "data", images={"a.png": _pixels(0), "img/../a.png": _pixels(1)})


def _fashioniq(tmp_path: Path) -> Path:
    root = tmp_path / "fiq"
    (root / "captions").mkdir(parents=True)
    (root / "images").mkdir()
    pairs = [{"candidate": "B001", "target": "B002", "captions": ["is red", "has no sleeves"]}]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(pairs, indent=1))
    _good(root / "images" / "B001.png")
    return root


def test_fashioniq_refuses_an_image_linked_from_outside_its_image_folder(tmp_path):
    root = _fashioniq(tmp_path)
    (root / "images" / "B002.jpg").symlink_to(_good(tmp_path / "outside.png"))
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json:\d+: image 'B002' is .*outside the image folder"):
        load_fashioniq(root, "dress", splits=("test",))


def test_fashioniq_verifies_its_images(tmp_path):
    root = _fashioniq(tmp_path)
    (root / "images" / "B002.jpg").write_bytes(BROKEN["truncated JPEG"])
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json:\d+: image 'B002' cannot be used"):
        load_fashioniq(root, "dress", splits=("test",))


def test_shoes_refuses_an_image_linked_from_outside_its_image_folder(tmp_path):
    root = tmp_path / "shoes"
    (root / "images" / "boots").mkdir(parents=True)
    record = {"ImageName": "img_b.jpg", "ReferenceImageName": "img_a.jpg", "RelativeCaption": "taller"}
    (root / "relative_captions_shoes.json").write_text(json.dumps([record]))
    (root / "train_im_names.txt").write_text("img_a.jpg\nimg_b.jpg\n")
    (root / "eval_im_names.txt").write_text("")
    _good(root / "images" / "boots" / "img_a.jpg")
    (root / "images" / "boots" / "img_b.jpg").symlink_to(_good(tmp_path / "outside.png"))
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json:1: image 'img_b\.jpg' is .*outside"):
        load_shoes(root, splits=("train",))


def test_fashion200k_refuses_a_label_path_climbing_out_of_the_image_folder(tmp_path):
    root = tmp_path / "f200k"
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "dress_test_detect_all.txt").write_text(
        "women/a.jpeg\t0.9\tred dress\nwomen/b.jpeg\t0.9\tblue dress\n../outside.png\t0.9\tblue dress\n"
    )
    (root / "test_queries.txt").write_text("women/a.jpeg women/b.jpeg\n")
    (root / "women").mkdir()
    _good(root / "women" / "a.jpeg")
    _good(root / "women" / "b.jpeg")
    _good(tmp_path / "outside.png")
    with pytest.raises(DataError, match=r"test_queries\.txt:1: image '\.\./outside\.png' is outside the image folder"):
        load_fashion200k(root, splits=("test",))


def test_write_folder_refuses_a_key_without_an_image_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"images: 'a\.txt' has no image suffix"):
        write_folder(tmp_path / "data", images={"a.txt": _pixels(0)})
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("max_pixels", [0, -5, 2.0, True])
def test_a_bad_pixel_limit_for_image_files_is_named(tmp_path, max_pixels):
    with pytest.raises(ValueError, match="max_pixels"):
        ImageFiles(tmp_path, max_pixels=max_pixels)
