"""TimmViTPyramid: a timm ViT's patch tokens after chosen blocks, as (B, C, H/p, W/p) maps.

Real timm models (vit_tiny_patch16_224 at small image sizes, random weights, nothing
downloaded). The levels are compared with the model's own modules run by hand in the
test: patch projection -> class token and position embedding -> blocks -> drop the class
token -> reshape to the patch grid.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from einops import rearrange
from safetensors.torch import save_file

from valfusion.encoders import FeaturePyramid, TimmViTPyramid, default_vit_indices

NAME = "vit_tiny_patch16_224"
SIZE = (32, 64)  # a 2 x 4 patch grid: rows and columns cannot be confused


def plain_vit(seed: int, img_size=SIZE, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(NAME, pretrained=False, img_size=img_size, **kwargs).eval()


def tokens_after_blocks(vit: torch.nn.Module, images: torch.Tensor, indices) -> list:
    """Independent statement of a plain ViT (class token, no register tokens) by hand."""
    patches = vit.patch_embed.proj(images)
    height, width = patches.shape[-2:]
    tokens = rearrange(patches, "b c h w -> b (h w) c")
    cls = vit.cls_token.expand(images.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + vit.pos_embed
    outputs = []
    for i, block in enumerate(vit.blocks):
        tokens = block(tokens)
        if i in indices:
            outputs.append(rearrange(tokens[:, 1:], "b (h w) c -> b c h w", h=height, w=width))
    return outputs


def save_weights(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def test_default_indices_end_the_last_three_quarters():
    assert default_vit_indices(12) == (5, 8, 11)
    assert default_vit_indices(24) == (11, 17, 23)
    assert default_vit_indices(2) == (0, 1)
    assert default_vit_indices(1) == (0,)
    with pytest.raises(ValueError, match=r"^depth: expected a positive int, got 0"):
        default_vit_indices(0)


def test_levels_have_embed_dim_channels_at_patch_stride():
    pyramid = TimmViTPyramid(NAME, img_size=SIZE)
    assert isinstance(pyramid, FeaturePyramid)
    assert pyramid.indices == (5, 8, 11)
    assert pyramid.channels == (192, 192, 192)
    assert pyramid.reductions == (16, 16, 16)
    assert pyramid.feature_sizes(SIZE) == [(2, 4)] * 3
    with torch.no_grad():
        maps = pyramid(torch.randn(2, 3, *SIZE))
    assert [tuple(m.shape) for m in maps] == [(2, 192, 2, 4)] * 3


def test_levels_are_the_blocks_patch_tokens_computed_by_hand():
    source = plain_vit(seed=0)
    pyramid = TimmViTPyramid(copy.deepcopy(source), indices=(0, 6, 11)).eval()
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        got = pyramid(images)
        expected = tokens_after_blocks(source, images, (0, 6, 11))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_blocks_after_the_last_index_the_norm_and_head_are_pruned():
    pyramid = TimmViTPyramid(NAME, img_size=SIZE, indices=(1, 3))
    assert len(pyramid.model.blocks) == 4
    names = pyramid.state_dict().keys()
    assert not any(k.startswith(("norm.", "head.", "fc_norm.", "blocks.4.")) for k in names)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_of_the_plain_model_gives_its_tokens(tmp_path, suffix):
    source = plain_vit(seed=1)  # with its 1000-class head, which the pyramid drops
    path = save_weights(source.state_dict(), tmp_path / f"vit{suffix}")
    pyramid = TimmViTPyramid(NAME, img_size=SIZE, weights=path).eval()
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        got = pyramid(images)
        expected = tokens_after_blocks(source, images, pyramid.indices)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert "state_dict" not in pyramid.model.pretrained_cfg  # no second copy kept


def test_weights_file_without_head_is_accepted(tmp_path):
    source = plain_vit(seed=2, num_classes=0)
    path = save_weights(source.state_dict(), tmp_path / "trunk.safetensors")
    pyramid = TimmViTPyramid(NAME, img_size=SIZE, weights=path)
    assert torch.equal(pyramid.model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)


def test_position_embedding_is_resampled_to_another_image_size(tmp_path):
    source = plain_vit(seed=3, img_size=32)  # 2 x 2 grid
    path = save_weights(source.state_dict(), tmp_path / "vit32.pt")
    pyramid = TimmViTPyramid(NAME, img_size=64, weights=path)  # 4 x 4 grid
    assert pyramid.model.pos_embed.shape == (1, 1 + 16, 192)
    torch.testing.assert_close(pyramid.model.pos_embed[:, :1], source.pos_embed[:, :1])
    assert torch.equal(pyramid.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_weights_of_a_wider_vit_are_refused_in_one_line(tmp_path):
    torch.manual_seed(4)
    wider = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=SIZE)
    path = save_weights(wider.state_dict(), tmp_path / "vit_small.safetensors")
    with pytest.raises(ValueError) as info:
        TimmViTPyramid(NAME, img_size=SIZE, weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"weights: {path} does not fit timm {NAME}:")
    assert "shape mismatches" in message and "384" in message and "192" in message


def test_weights_with_foreign_keys_are_refused(tmp_path):
    state = plain_vit(seed=5).state_dict()
    state["visual.proj"] = state.pop("blocks.2.attn.proj.weight")
    path = save_weights(state, tmp_path / "renamed.pt")
    with pytest.raises(ValueError) as info:
        TimmViTPyramid(NAME, img_size=SIZE, weights=path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "1 missing keys ['blocks.2.attn.proj.weight']" in message
    assert "1 unexpected keys ['visual.proj']" in message


def test_gradients_reach_every_parameter():
    pyramid = TimmViTPyramid(NAME, img_size=SIZE, indices=(1, 2, 3)).train()
    maps = pyramid(torch.randn(2, 3, *SIZE))
    sum(m.square().mean() for m in maps).backward()
    for name, parameter in pyramid.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name


def test_state_dict_round_trip_gives_the_same_maps():
    first = TimmViTPyramid(NAME, img_size=SIZE, indices=(2, 5)).eval()
    torch.manual_seed(6)
    second = TimmViTPyramid(NAME, img_size=SIZE, indices=(2, 5)).eval()
    second.load_state_dict(first.state_dict(), strict=True)
    images = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        for a, b in zip(first(images), second(images), strict=True):
            torch.testing.assert_close(a, b)


def test_images_of_another_size_are_refused_unless_dynamic():
    fixed = TimmViTPyramid(NAME, img_size=SIZE, indices=(0,))
    with pytest.raises(
        ValueError, match=r"^images: this ViT was built for 32x64 images, got 48x80"
    ):
        fixed(torch.randn(1, 3, 48, 80))
    with pytest.raises(ValueError, match=r"^image_size: this ViT was built for 32x64"):
        fixed.feature_sizes(48)
    dynamic = TimmViTPyramid(NAME, img_size=SIZE, indices=(0,), dynamic_img_size=True)
    with torch.no_grad():
        maps = dynamic(torch.randn(1, 3, 48, 80))
    assert [tuple(m.shape[2:]) for m in maps] == dynamic.feature_sizes((48, 80)) == [(3, 5)]


@pytest.mark.parametrize("indices", [(), (3, 1), (2, 2), (12,), (-1,), (1.0,)])
def test_bad_indices_are_refused(indices):
    with pytest.raises(ValueError, match=r"^indices: expected distinct increasing block indices"):
        TimmViTPyramid(NAME, img_size=SIZE, indices=indices)


def test_a_module_without_the_vit_layout_is_refused():
    with pytest.raises(ValueError, match=r"^model: expected a timm ViT-family model.*Linear"):
        TimmViTPyramid(torch.nn.Linear(2, 2))


def test_imagenet_for_a_vit_without_published_weights_is_refused_offline():
    with pytest.raises(ValueError, match=r"^weights: timm publishes no pretrained weights"):
        TimmViTPyramid("vit_base_patch16_18x2_224", weights="imagenet")


def test_weights_and_build_arguments_need_a_name():
    with pytest.raises(ValueError, match=r"^weights: only used when model is a timm name"):
        TimmViTPyramid(plain_vit(seed=7), weights="imagenet")
    with pytest.raises(ValueError, match=r"^img_size: only used when model is a timm name"):
        TimmViTPyramid(plain_vit(seed=7), img_size=64)
