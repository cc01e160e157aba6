"""Image loading: Pillow to a normalised (3, H, W) tensor, and how ids find their files."""

from __future__ import annotations

import re

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


# ------------------------------------------------------------ resize="pad" and transform=

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _halves(path, width: int, height: int, vertical: bool) -> None:
    """An image whose left (or top) half is red and whose other half is blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height) if vertical else (0, 0, width, height // 2))
    image.save(path)


def test_pad_keeps_a_wide_image_s_aspect_and_pads_above_and_below(tmp_path):
    # 8 x 4 (2:1) into 16 x 16: scale min(16/4, 16/8) = 2 -> 16 wide, 8 high, rows 4..11.
    _halves(tmp_path / "wide.png", 8, 4, vertical=True)
    image = load_image(tmp_path / "wide.png", 16, resize="pad")
    expected = torch.zeros(3, 16, 16)  # the mean colour, normalised
    expected[:, 4:12, :8] = _expected(RED, 8, 8)
    expected[:, 4:12, 8:] = _expected(BLUE, 8, 8)
    # Bilinear resizing blends the two columns next to the red/blue boundary (x = 7, 8).
    keep = torch.ones(16, dtype=torch.bool)
    keep[7:9] = False
    torch.testing.assert_close(image[:, :, keep], expected[:, :, keep], rtol=0, atol=1e-5)


def test_pad_keeps_a_tall_image_s_aspect_and_pads_left_and_right(tmp_path):
    # 3 x 6 (1:2) into 12 x 10 (H, W): scale min(12/6, 10/3) = 2 -> 6 wide, 12 high, columns 2..7.
    _halves(tmp_path / "tall.png", 3, 6, vertical=False)
    image = load_image(tmp_path / "tall.png", (12, 10), resize="pad")
    assert image.shape == (3, 12, 10)
    torch.testing.assert_close(image[:, :, :2], torch.zeros(3, 12, 2), rtol=0, atol=0)
    torch.testing.assert_close(image[:, :, 8:], torch.zeros(3, 12, 2), rtol=0, atol=0)
    torch.testing.assert_close(image[:, :5, 2:8], _expected(RED, 5, 6), rtol=0, atol=1e-5)
    torch.testing.assert_close(image[:, 7:, 2:8], _expected(BLUE, 5, 6), rtol=0, atol=1e-5)


def test_padding_is_the_mean_colour_once_denormalised(tmp_path):
    _halves(tmp_path / "wide.png", 8, 4, vertical=True)
    picture = denormalize(load_image(tmp_path / "wide.png", 16, resize="pad"))
    torch.testing.assert_close(picture[:, 0], torch.tensor(IMAGENET_MEAN).view(3, 1).expand(3, 16),
                               rtol=0, atol=1e-6)


def test_stretch_is_the_default_and_fills_the_whole_image(tmp_path):
    _halves(tmp_path / "wide.png", 8, 4, vertical=True)
    image = load_image(tmp_path / "wide.png", 16)
    torch.testing.assert_close(image[:, :, :7], _expected(RED, 16, 7), rtol=0, atol=1e-5)


def test_an_unknown_resize_mode_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"resize: expected 'stretch' or 'pad', got 'crop'"):
        ImageFiles(tmp_path, resize="crop")


def _compose(size: tuple[int, int]):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize(size),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def test_a_torchvision_v2_compose_is_applied_as_transform(tmp_path):
    Image.new("RGB", (10, 7), (10, 200, 30)).save(tmp_path / "a.png")
    files = ImageFiles(tmp_path, image_size=(4, 6), transform=_compose((4, 6)))
    image = files("a.png")
    assert type(image) is torch.Tensor  # not torchvision's tv_tensors.Image subclass
    torch.testing.assert_close(image, _expected((10, 200, 30), 4, 6), rtol=0, atol=1e-5)


def test_the_transform_replaces_the_default_pipeline(tmp_path):
    Image.new("RGB", (5, 5), (10, 200, 30)).save(tmp_path / "a.png")
    seen = []

    def transform(picture):
        seen.append(picture.size)
        return torch.full((3, 4, 4), 7.0)

    torch.testing.assert_close(load_image(tmp_path / "a.png", 4, transform=transform),
                               torch.full((3, 4, 4), 7.0), rtol=0, atol=0)
    assert seen == [(5, 5)]  # the decoded file, not resized first


def test_load_source_passes_the_transform_and_still_decodes_every_image(tmp_path):
    from valfusion.data import Triplet, load_source, write_folder

    pixels = {name: torch.rand(3, 6, 6) for name in ("a.png", "b.png", "c.png")}
    triplets = [Triplet("a.png", "make it red", ("b.png",)), Triplet("b.png", "make it blue", ("c.png",))]
    folder = write_folder(tmp_path / "data", images=pixels, train=triplets)
    calls = []
    data = load_source(str(folder), splits=("train",), image_size=4,
                       transform=lambda picture: calls.append(picture) or torch.zeros(3, 4, 4))
    assert data.train.images("a.png").shape == (3, 4, 4) and len(calls) == 1
    (folder / "c.png").write_bytes(b"not an image")  # verification decodes it, transform or not
    with pytest.raises(DataError, match=r"c\.png"):
        load_source(str(folder), splits=("train",), image_size=4, transform=_compose((4, 4)))


@pytest.mark.parametrize(
    ("output", "received"),
    [
        (lambda: torch.zeros(3, 5, 4), r"shape \(3, 5, 4\)"),
        (lambda: torch.zeros(4, 4, 3), r"shape \(4, 4, 3\)"),
        (lambda: torch.zeros(3, 4, 4, dtype=torch.uint8), r"torch\.uint8"),
        (lambda: Image.new("RGB", (4, 4)), r"got Image"),
    ],
    ids=["size", "channels-last", "integer", "not-a-tensor"],
)
def test_bad_transform_output_is_a_value_error_naming_transform(tmp_path, output, received):
    Image.new("RGB", (5, 5)).save(tmp_path / "a.png")
    files = ImageFiles(tmp_path, image_size=4, transform=lambda picture: output())
    with pytest.raises(ValueError, match=r"^transform: expected it to return a float tensor \(3, 4, 4\)") as info:
        files("a.png")
    assert re.search(received, str(info.value)) and "a.png" in str(info.value)


def test_a_transform_that_is_not_callable_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"^transform: expected a callable"):
        ImageFiles(tmp_path, transform="resize")
