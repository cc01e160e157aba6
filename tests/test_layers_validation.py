"""Bad input gets a ValueError naming the argument, what was expected and what was received."""

from __future__ import annotations

import re

import pytest
import torch

from valfusion.layers import (
    CompositeTransformer,
    JointAttentionalPreservation,
    MultiLevelComposer,
    SelfAttentionalTransformation,
    build_composer,
)

C, D = 8, 5


def _raises(*fragments: str) -> pytest.RaisesContext:
    return pytest.raises(ValueError, match=".*".join(re.escape(f) for f in fragments))


def test_image_map_with_three_dimensions_is_rejected() -> None:
    with _raises("image_features", "4-D tensor (B, C, H, W)", "(2, 8, 3)"):
        CompositeTransformer(C, D)(torch.randn(2, C, 3), torch.randn(2, D))


def test_pooled_image_is_rejected_where_a_map_is_needed() -> None:
    with _raises("image_features", "4-D tensor (B, C, H, W)", "(2, 8)"):
        CompositeTransformer(C, D)(torch.randn(2, C), torch.randn(2, D))


def test_image_with_three_dimensions_is_rejected_by_pooled_composers() -> None:
    with _raises("image_features", "(B, C)", "(B, C, H, W)", "(2, 8, 3)"):
        build_composer("tirg", C, D)(torch.randn(2, C, 3), torch.randn(2, D))


def test_text_with_wrong_number_of_dimensions_is_rejected() -> None:
    with _raises("text_features", "2-D tensor (B, D)", "(2, 5, 1)"):
        CompositeTransformer(C, D)(torch.randn(2, C, 3, 3), torch.randn(2, D, 1))


def test_batch_mismatch_between_image_and_text_is_rejected() -> None:
    with _raises("text_features", "batch size 3", "(3, 5)", "image_features", "(2, 8, 3, 3)"):
        CompositeTransformer(C, D)(torch.randn(2, C, 3, 3), torch.randn(3, D))


def test_wrong_image_channel_count_is_rejected() -> None:
    with _raises("image_features", "channels C = 8", "got 6", "(2, 6, 3, 3)"):
        CompositeTransformer(C, D)(torch.randn(2, 6, 3, 3), torch.randn(2, D))


def test_wrong_text_width_is_rejected() -> None:
    with _raises("text_features", "text width D = 5", "got 4", "(2, 4)"):
        CompositeTransformer(C, D)(torch.randn(2, C, 3, 3), torch.randn(2, 4))


def test_integer_image_tensor_is_rejected() -> None:
    with _raises("image_features", "floating-point", "torch.int64", "(2, 8, 3, 3)"):
        CompositeTransformer(C, D)(torch.ones(2, C, 3, 3, dtype=torch.long), torch.randn(2, D))


def test_integer_text_tensor_is_rejected() -> None:
    with _raises("text_features", "floating-point", "torch.int64", "(2, 5)"):
        CompositeTransformer(C, D)(torch.randn(2, C, 3, 3), torch.ones(2, D, dtype=torch.long))


def test_wrong_feature_size_for_official_configuration_is_rejected() -> None:
    block = CompositeTransformer.official(C, D, (4, 4))
    with _raises("image_features", "(H, W) = (4, 4)", "(2, 8, 4, 5)"):
        block(torch.randn(2, C, 4, 5), torch.randn(2, D))


def test_self_attention_input_with_wrong_channels_is_rejected() -> None:
    with _raises("x", "channels C = 8", "(1, 4, 2, 2)"):
        SelfAttentionalTransformation(C)(torch.randn(1, 4, 2, 2))


def test_reference_with_another_map_size_is_rejected() -> None:
    with _raises("reference", "width W (as in fused) = 3", "(2, 8, 3, 4)"):
        JointAttentionalPreservation(C)(torch.randn(2, C, 3, 3), torch.randn(2, C, 3, 4))


def test_channels_not_divisible_by_heads_are_rejected() -> None:
    with _raises("channels", "multiple of num_heads=3", "got 8"):
        SelfAttentionalTransformation(C, 3)


def test_unknown_head_layout_is_rejected() -> None:
    with _raises("head_layout", "'full' or 'grouped'", "'split'"):
        SelfAttentionalTransformation(C, head_layout="split")


def test_unknown_composer_name_is_rejected() -> None:
    with _raises("name", "'val'", "'tirg'", "got 'vall'"):
        build_composer("vall", C, D)


def test_official_composer_without_feature_size_is_rejected() -> None:
    with _raises("feature_size", "val_official"):
        build_composer("val_official", C, D)


def test_multi_level_input_with_wrong_number_of_maps_is_rejected() -> None:
    composer = MultiLevelComposer.build("tirg", [C, C], D)
    with _raises("image_features", "2 maps", "got 1 maps"):
        composer([torch.randn(2, C, 3, 3)], torch.randn(2, D))
