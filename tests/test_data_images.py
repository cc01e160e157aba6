"""Image loading: Pillow to a normalised (3, H, W) tensor, and how ids find their files."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from valfusion.data import DataError, ImageFiles, denormalize, load_image, normalize
from valfusion.data.images import IMAGENET_MEAN, IMAGENET_STD


def _expected(rgb: tuple[int, int, int], height: int, width: int) -> torch.Tensor:
    pixel = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)])
    return pixel.view(3, 1, 1).expand(3, height, width)


def test_load_image_resizes_and_normalises_per_channel(tmp_path):
    Image.new("RGB", (10, 7), (10, 200, 30)).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", image_size=(4, 6))
    assert image.dtype == torch.float32
    assert torch.allclose(image, _expected((10, 200, 30), 4, 6), atol=1e-6)


def test_load_image_converts_grayscale_to_three_channels(tmp_path):
    Image.new("L", (5, 5), 90).save(tmp_path / "g.png")
    assert torch.allclose(
        load_image(tmp_path / "g.png", 3), _expected((90, 90, 90), 3, 3), atol=1e-6
    )


def test_load_image_keeps_row_and_column_order(tmp_path):
    image = Image.new("RGB", (2, 2), (0, 0, 0))
    image.putpixel((1, 0), (255, 255, 255))  # x = 1, y = 0: first row, second column
    image.save(tmp_path / "p.png")
    loaded = denormalize(load_image(tmp_path / "p.png", (2, 2)))
    assert torch.allclose(loaded[:, 0, 1], torch.ones(3), atol=1e-6)
    assert torch.allclose(loaded[:, 1, 0], torch.zeros(3), atol=1e-6)


def test_load_image_of_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")


def test_load_image_of_a_broken_file_names_the_path(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
        load_image(tmp_path / "broken.jpg")


def test_denormalize_inverts_normalize():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)


@pytest.mark.parametrize("size", [0, (3,), (2, -1), 2.5])
def test_bad_image_size_raises_value_error_naming_it(size):
    with pytest.raises(ValueError, match="image_size"):
        ImageFiles(".", image_size=size)


def test_stem_match_finds_an_id_with_any_image_suffix(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "B00X.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "B00Y.jpg")
    files = ImageFiles(tmp_path, match="stem", image_size=4)
    assert "B00X" in files and "B00Y" in files and "B00Z" not in files


def test_name_match_finds_a_file_in_a_sub_folder(tmp_path):
    (tmp_path / "womens_clogs" / "0").mkdir(parents=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "womens_clogs" / "0" / "img_1.jpg")
    files = ImageFiles(tmp_path, match="name", image_size=4)
    assert files.path("img_1.jpg") == tmp_path / "womens_clogs" / "0" / "img_1.jpg"
    assert files("img_1.jpg").shape == (3, 4, 4)


def test_path_match_resolves_relative_to_the_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "c.jpeg")
    files = ImageFiles(tmp_path, match="path")
    assert "a/b/c.jpeg" in files and "c.jpeg" not in files


def test_loading_an_unknown_id_names_where_it_was_looked_for(tmp_path):
    files = ImageFiles(tmp_path, match="stem")
    with pytest.raises(DataError, match="B00Q"):
        files("B00Q")
