"""TimmPyramid on real timm models (needs the `timm` extra; timm itself needs torchvision).

Tested with timm 1.0.31 on torch 2.14.1 + torchvision 0.29.1. Nothing is downloaded:
models are built with pretrained=False, and weights come from a file the test saves.
"""

from __future__ import annotations

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from valfusion.encoders import TimmPyramid


def test_timm_resnet18_declares_timm_channels_and_strides():
    pyramid = TimmPyramid("resnet18", out_indices=(2, 3, 4))
    reference = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4))
    assert pyramid.channels == tuple(reference.feature_info.channels()) == (128, 256, 512)
    assert pyramid.reductions == tuple(reference.feature_info.reduction()) == (8, 16, 32)


@pytest.fixture(scope="module")
def timm_resnet18() -> TimmPyramid:
    return TimmPyramid("resnet18", out_indices=(2, 3, 4)).eval()


@settings(max_examples=6)
@given(height=st.integers(8, 80), width=st.integers(8, 80))
def test_timm_resnet18_maps_match_declared_channels_and_sizes(timm_resnet18, height, width):
    pyramid = timm_resnet18
    with torch.no_grad():
        maps = pyramid(torch.randn(1, 3, height, width))
    assert [m.shape[1] for m in maps] == list(pyramid.channels)
    assert [tuple(m.shape[2:]) for m in maps] == pyramid.feature_sizes((height, width))


def test_weights_file_is_loaded_into_the_feature_model(tmp_path):
    torch.manual_seed(11)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    pyramid = TimmPyramid("resnet18", weights=path)
    expected = source.state_dict()
    loaded = pyramid.model.state_dict()
    assert "layer4.1.conv2.weight" in loaded
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key


def test_channels_last_swin_backbone_gives_channels_first_maps():
    pyramid = TimmPyramid(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=4,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
    ).eval()
    with torch.no_grad():
        maps = pyramid(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (2, c, h, w) for c, (h, w) in zip(pyramid.channels, pyramid.feature_sizes(64))
    ]
    assert pyramid.channels == (16, 32, 64, 128)
