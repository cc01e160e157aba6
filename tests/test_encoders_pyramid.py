"""Specification of the feature-pyramid interface, SmallConvPyramid and the generic TimmPyramid.

Nothing here needs torchvision or timm; the real torchvision and timm backbones are
covered by tests/test_torchvision_pyramid.py and tests/test_encoders_timm.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from valfusion.encoders import (
    FeaturePyramid,
    SmallConvPyramid,
    TimmPyramid,
    TorchvisionResNetPyramid,
)

sizes = st.integers(1, 70)


# --- SmallConvPyramid -------------------------------------------------------------------


def test_default_small_pyramid_maps_64px_to_16_8_4():
    pyramid = SmallConvPyramid()
    maps = pyramid(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]


def test_small_pyramid_strides_double_from_four():
    assert SmallConvPyramid(channels=(4, 4, 4, 4)).reductions == (4, 8, 16, 32)


@given(
    channels=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    height=sizes,
    width=sizes,
)
def test_small_pyramid_maps_match_declared_channels_and_sizes(channels, height, width):
    pyramid = SmallConvPyramid(channels=channels)
    maps = pyramid(torch.randn(2, 3, height, width))
    assert len(maps) == pyramid.num_levels == len(channels)
    assert [m.shape[1] for m in maps] == list(channels)
    assert [tuple(m.shape[2:]) for m in maps] == pyramid.feature_sizes((height, width))
    assert all(m.shape[0] == 2 for m in maps)


def test_small_pyramid_every_parameter_gets_a_gradient():
    pyramid = SmallConvPyramid(channels=(4, 8, 16)).train()
    maps = pyramid(torch.randn(2, 3, 32, 32))
    sum((m * torch.randn_like(m)).sum() for m in maps).backward()
    for name, parameter in pyramid.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


BAD_IMAGES = {
    "3-D": torch.randn(3, 32, 32),
    "5-D": torch.randn(1, 1, 3, 32, 32),
    "one channel": torch.randn(2, 1, 32, 32),
    "channels last": torch.randn(2, 32, 32, 3),
    "uint8": torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
    "not a tensor": [[0.0]],
}


@pytest.mark.parametrize("case", BAD_IMAGES, ids=list(BAD_IMAGES))
def test_bad_images_raise_value_error_naming_images(case):
    with pytest.raises(ValueError, match=r"^images:"):
        SmallConvPyramid(channels=(4, 8))(BAD_IMAGES[case])


@pytest.mark.parametrize("image_size", [0, (32,), (32, 0), (32, 32, 32), 3.5])
def test_feature_sizes_rejects_bad_image_size(image_size):
    with pytest.raises(ValueError, match=r"^image_size:"):
        SmallConvPyramid().feature_sizes(image_size)


# --- the interface ----------------------------------------------------------------------


class AvgPoolPyramid(FeaturePyramid):
    """A user-written pyramid: average pooling by 2 and 4 (parameter-free)."""

    def __init__(self) -> None:
        super().__init__(channels=(3, 3), reductions=(2, 4))

    def forward_features(self, images):
        return [nn.functional.avg_pool2d(images, 2), nn.functional.avg_pool2d(images, 4)]


def test_feature_pyramid_is_abstract():
    with pytest.raises(TypeError):
        FeaturePyramid((1,), (1,))


def test_subclass_inherits_image_validation():
    with pytest.raises(ValueError, match=r"^images:"):
        AvgPoolPyramid()(torch.randn(2, 4, 8, 8))


def test_subclass_outputs_come_from_forward_features():
    images = torch.randn(2, 3, 8, 8)
    maps = AvgPoolPyramid()(images)
    torch.testing.assert_close(maps[1], images.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5)))


@pytest.mark.parametrize(
    ("channels", "reductions"), [((), ()), ((8, 16), (4,)), ((8, 0), (4, 8)), ((8,), (-4,))]
)
def test_interface_rejects_inconsistent_channels_and_reductions(channels, reductions):
    class Declared(AvgPoolPyramid):
        def __init__(self) -> None:
            FeaturePyramid.__init__(self, channels, reductions)

    with pytest.raises(ValueError, match=r"^(channels|reductions):"):
        Declared()


# --- TimmPyramid on a module built by the user (no timm needed) ---------------------------


class PatchBackbone(nn.Module):
    """Two levels made by unpadded stride-2 convolutions, so sizes are floor(H / r)."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(3, 5, kernel_size=2, stride=2)
        self.down2 = nn.Conv2d(5, 7, kernel_size=2, stride=2)
        self.feature_info = [{"num_chs": 5, "reduction": 2}, {"num_chs": 7, "reduction": 4}]

    def forward(self, x):
        first = self.down1(x)
        return [first, self.down2(first)]


class ChannelsLastBackbone(nn.Module):
    """Returns its maps as (B, H, W, C), as timm's Swin-style feature models do."""

    output_fmt = "NHWC"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 6, kernel_size=4, stride=4)

    def forward(self, x):
        return [self.proj(x).permute(0, 2, 3, 1)]


def test_timm_pyramid_reads_channels_and_reductions_from_feature_info():
    pyramid = TimmPyramid(PatchBackbone())
    assert pyramid.channels == (5, 7)
    assert pyramid.reductions == (2, 4)


@given(height=st.integers(4, 40), width=st.integers(4, 40))
def test_timm_pyramid_feature_sizes_match_the_backbone_output(height, width):
    pyramid = TimmPyramid(PatchBackbone())
    maps = pyramid(torch.randn(1, 3, height, width))
    assert [tuple(m.shape[2:]) for m in maps] == pyramid.feature_sizes((height, width))
    assert [tuple(m.shape[2:]) for m in maps] == [
        (height // 2, width // 2),
        (height // 4, width // 4),
    ]


def test_timm_pyramid_returns_the_backbone_maps_unchanged():
    backbone = PatchBackbone()
    images = torch.randn(2, 3, 16, 16)
    for got, expected in zip(TimmPyramid(backbone)(images), backbone(images)):
        torch.testing.assert_close(got, expected)


def test_timm_pyramid_turns_channels_last_maps_to_channels_first():
    backbone = ChannelsLastBackbone()
    images = torch.randn(2, 3, 16, 12)
    (got,) = TimmPyramid(backbone, channels=(6,), reductions=(4,))(images)
    torch.testing.assert_close(got, backbone.proj(images))


def test_timm_pyramid_needs_channels_when_module_has_no_feature_info():
    with pytest.raises(ValueError, match=r"^channels:"):
        TimmPyramid(ChannelsLastBackbone())


def test_timm_pyramid_rejects_maps_that_contradict_declared_channels():
    pyramid = TimmPyramid(PatchBackbone(), channels=(5, 8))
    with pytest.raises(ValueError, match=r"^model:.*\(5, 7\)"):
        pyramid(torch.randn(1, 3, 16, 16))


def test_timm_pyramid_rejects_build_options_for_a_built_module():
    with pytest.raises(ValueError, match=r"^out_indices:"):
        TimmPyramid(PatchBackbone(), out_indices=(1, 2))


def test_timm_pyramid_rejects_pretrained_download():
    with pytest.raises(ValueError, match=r"^pretrained:"):
        TimmPyramid("resnet18", pretrained=True)


def test_timm_pyramid_rejects_a_weights_file_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match=r"^weights:"):
        TimmPyramid("resnet18", weights=tmp_path / "missing.pth")


# --- optional dependencies ----------------------------------------------------------------


def test_timm_name_without_timm_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"valfusion\[timm\]"):
        TimmPyramid("resnet18")


def test_torchvision_pyramid_without_torchvision_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match=r"valfusion\[vision\]"):
        TorchvisionResNetPyramid("resnet18")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arch": "vgg16"}, "arch"),
        ({"stages": (3, 2)}, "stages"),
        ({"stages": (2, 5)}, "stages"),
        ({"stages": ()}, "stages"),
        ({"stages": (2.0, 3)}, "stages"),
        ({"frozen_stages": 5}, "frozen_stages"),
        ({"frozen_stages": 1.0}, "frozen_stages"),
    ],
)
def test_torchvision_pyramid_rejects_bad_arguments_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        TorchvisionResNetPyramid(**kwargs)


def test_encoders_import_without_torchvision_or_timm():
    code = (
        "import sys; sys.modules['torchvision'] = None; sys.modules['timm'] = None; "
        "from valfusion.encoders import TorchvisionResNetPyramid, TimmPyramid, SmallConvPyramid; "
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
