"""Shape properties: every composition layer returns a map of its input's shape."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from valfusion.layers import (
    COMPOSERS,
    CompositeTransformer,
    JointAttentionalPreservation,
    MultiLevelComposer,
    SelfAttentionalTransformation,
    TextImageFusion,
    build_composer,
)

POOLED_COMPOSERS = ("tirg", "tirg_pooled", "concat", "combiner", "image_only", "text_only")

# The parametrised tests run once per layer; fewer examples each keeps the file fast on
# two cores, and the explicit @example cases pin batch 1, a 1x1 map and a non-square map.
few_examples = settings(max_examples=min(10, settings.default.max_examples))


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # These tensors are tiny: a second OpenMP thread only adds synchronisation, which on
    # a shared, oversubscribed machine costs up to 10x in wall time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def map_shapes(draw: st.DrawFn, min_batch: int = 1) -> tuple[int, int, int, int, int]:
    """(B, C, D, H, W): batch 1 included, C a multiple of 2 heads, non-square maps from 1x1."""
    batch = draw(st.integers(min_batch, 3))
    channels = 2 * draw(st.integers(1, 4))
    text_channels = draw(st.integers(1, 6))
    height = draw(st.integers(1, 6))
    width = draw(st.integers(1, 6))
    return batch, channels, text_channels, height, width


def _inputs(shape: tuple[int, int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, text_channels, height, width = shape
    return torch.randn(batch, channels, height, width), torch.randn(batch, text_channels)


@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
def test_text_image_fusion_keeps_image_shape(shape: tuple[int, int, int, int, int]) -> None:
    image, text = _inputs(shape)
    fusion = TextImageFusion(shape[1], shape[2], num_layers=2).eval()
    assert fusion(image, text).shape == image.shape


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
@example(shape=(1, 4, 3, 2, 5))
def test_self_attentional_transformation_keeps_input_shape(
    head_layout: str, shape: tuple[int, int, int, int, int]
) -> None:
    image, _ = _inputs(shape)
    block = SelfAttentionalTransformation(shape[1], 2, head_layout=head_layout).eval()
    assert block(image).shape == image.shape


@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
@example(shape=(1, 4, 3, 2, 5))
def test_joint_attentional_preservation_keeps_reference_shape(
    shape: tuple[int, int, int, int, int],
) -> None:
    image, _ = _inputs(shape)
    fused = torch.randn_like(image)
    block = JointAttentionalPreservation(shape[1]).eval()
    assert block(fused, image).shape == image.shape


@pytest.mark.parametrize("name", COMPOSERS)
@few_examples
@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
@example(shape=(1, 4, 3, 2, 5))
def test_composer_keeps_map_shape_in_eval_mode(
    name: str, shape: tuple[int, int, int, int, int]
) -> None:
    image, text = _inputs(shape)
    composer = build_composer(name, shape[1], shape[2], feature_size=image.shape[2:]).eval()
    assert composer(image, text).shape == image.shape


@pytest.mark.parametrize("name", COMPOSERS)
@few_examples
@given(shape=map_shapes(min_batch=2))
@example(shape=(2, 2, 1, 1, 1))
def test_composer_keeps_map_shape_in_training_mode(
    name: str, shape: tuple[int, int, int, int, int]
) -> None:
    image, text = _inputs(shape)
    composer = build_composer(name, shape[1], shape[2], feature_size=image.shape[2:]).train()
    assert composer(image, text).shape == image.shape


@pytest.mark.parametrize("name", POOLED_COMPOSERS)
@few_examples
@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
def test_composer_keeps_pooled_shape(name: str, shape: tuple[int, int, int, int, int]) -> None:
    batch, channels, text_channels, _, _ = shape
    pooled, text = torch.randn(batch, channels), torch.randn(batch, text_channels)
    composer = build_composer(name, channels, text_channels).eval()
    assert composer(pooled, text).shape == pooled.shape


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
@few_examples
@given(shape=map_shapes())
@example(shape=(1, 2, 1, 1, 1))
def test_attention_maps_have_documented_shapes(
    head_layout: str, shape: tuple[int, int, int, int, int]
) -> None:
    batch, channels, _, height, width = shape
    image, text = _inputs(shape)
    block = CompositeTransformer(shape[1], shape[2], head_layout=head_layout).eval()
    _, attention = block(image, text, return_attention=True)
    tokens = height * width
    assert attention.channel_gate.shape == (batch, channels, 1, 1)
    assert attention.spatial_gate.shape == (batch, 1, height, width)
    assert attention.joint_attention.shape == (batch, channels, height, width)
    assert attention.self_attention.shape == (batch, 2, tokens, tokens)


@few_examples
@given(
    batch=st.integers(1, 3),
    levels=st.lists(
        st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3
    ),
    text_channels=st.integers(1, 6),
)
def test_multi_level_composer_keeps_every_level_shape(
    batch: int, levels: list[tuple[int, int, int]], text_channels: int
) -> None:
    maps = [torch.randn(batch, 2 * c, h, w) for c, h, w in levels]
    composer = MultiLevelComposer.build(
        "val_official",
        [m.shape[1] for m in maps],
        text_channels,
        feature_sizes=[tuple(m.shape[2:]) for m in maps],
    ).eval()
    outputs = composer(maps, torch.randn(batch, text_channels))
    assert [o.shape for o in outputs] == [m.shape for m in maps]
