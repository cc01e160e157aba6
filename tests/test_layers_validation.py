"""Bad input gets a ValueError naming the argument, what was expected and what was received."""

from __future__ import annotations

import re

import pytest
import torch

from valfusion._validation import fmt_shape
from valfusion.layers import (
    COMPOSERS,
    CompositeTransformer,
    JointAttentionalPreservation,
    MultiLevelComposer,
    SelfAttentionalTransformation,
    TextImageFusion,
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


def test_feature_size_of_wrong_length_is_rejected() -> None:
    # A 3-tuple used to build a block that refused every input map.
    with _raises("feature_size", "an int or (H, W)", "(4, 4, 4)"):
        CompositeTransformer(C, D, feature_size=(4, 4, 4))


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


# --- every public layer: empty batches, zero-size maps, dtypes ---------------------------
#
# A layer is called as ``call(layer, image, text)``; the parts that take no text ignore it.
# Every layer follows nn.Conv2d: a batch of zero samples gives an empty output of the right
# shape (and a zero-size gradient), a map with H = 0 or W = 0 is rejected, here with a
# ValueError naming the argument instead of conv2d's RuntimeError.

H = W = 3


def _composer_case(name: str) -> tuple:
    return (
        lambda: build_composer(name, C, D, feature_size=(H, W)),
        lambda layer, image, text: layer(image, text),
        "image_features",
    )


LAYERS = {
    **{name: _composer_case(name) for name in COMPOSERS},
    "TextImageFusion": (
        lambda: TextImageFusion(C, D),
        lambda layer, image, text: layer(image, text),
        "image_features",
    ),
    "SelfAttentionalTransformation": (
        lambda: SelfAttentionalTransformation(C),
        lambda layer, image, text: layer(image),
        "x",
    ),
    "JointAttentionalPreservation": (
        lambda: JointAttentionalPreservation(C),
        lambda layer, image, text: layer(image, image),
        "fused",
    ),
    "MultiLevelComposer": (
        lambda: MultiLevelComposer.build("val", [C, C], D),
        lambda layer, image, text: layer([image, image], text)[1],
        "image_features",
    ),
}
TAKE_TEXT = [n for n in LAYERS if n not in ("SelfAttentionalTransformation", "JointAttentionalPreservation")]
POOLED = ["tirg", "tirg_pooled", "concat", "combiner", "image_only", "text_only"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_an_empty_batch_gives_an_empty_output_of_the_right_shape(name, channels_last, training):
    build, call, _ = LAYERS[name]
    layer = build().train(training)
    image = torch.randn(0, C, H, W)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    image.requires_grad_()
    text = torch.randn(0, D, requires_grad=True)
    output = call(layer, image, text)
    assert output.shape == (0, C, H, W) and output.dtype == image.dtype
    output.sum().backward()
    if name != "text_only":  # the text-only baseline reads only the image's shape
        assert image.grad is not None and image.grad.shape == image.shape


@pytest.mark.parametrize("name", POOLED)
def test_an_empty_batch_of_pooled_vectors_gives_an_empty_output(name):
    layer = build_composer(name, C, D)
    assert layer(torch.randn(0, C), torch.randn(0, D)).shape == (0, C)


@pytest.mark.parametrize("shape", [(2, C, 0, W), (2, C, H, 0), (0, C, 0, 0)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_a_zero_size_map_is_rejected_naming_the_argument(name, shape):
    build, call, argument = LAYERS[name]
    with _raises(argument, "non-empty map", "H >= 1 and W >= 1", fmt_shape(shape)):
        call(build(), torch.randn(*shape), torch.randn(shape[0], D))


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "image_only"])
def test_an_image_of_another_dtype_than_the_weights_is_rejected(name):
    build, call, argument = LAYERS[name]
    image = torch.randn(2, C, H, W, dtype=torch.float64)
    text = torch.randn(2, D, dtype=torch.float64)
    with _raises(argument, "expected dtype torch.float32", "weights", "got torch.float64"):
        call(build(), image, text)


@pytest.mark.parametrize("name", TAKE_TEXT)
def test_a_text_of_another_dtype_than_the_image_is_rejected(name):
    build, call, _ = LAYERS[name]
    image = torch.randn(2, C, H, W)
    text = torch.randn(2, D, dtype=torch.float16)
    with _raises("text_features", "expected dtype torch.float32", "image_features", "got torch.float16"):
        call(build(), image, text)


def test_a_reference_of_another_dtype_than_the_fused_map_is_rejected():
    fused = torch.randn(2, C, H, W)
    with _raises("reference", "expected dtype torch.float32", "fused", "got torch.float64"):
        JointAttentionalPreservation(C)(fused, fused.double())


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_converted_to_float64_takes_float64_inputs(name):
    build, call, _ = LAYERS[name]
    layer = build().double().eval()
    output = call(layer, torch.randn(2, C, H, W, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64))
    assert output.dtype == torch.float64 and torch.isfinite(output).all()


@pytest.mark.parametrize("name", list(LAYERS))
def test_mixed_dtypes_are_accepted_under_autocast(name):
    build, call, _ = LAYERS[name]
    layer = build().train()
    image = torch.randn(2, C, H, W, dtype=torch.bfloat16, requires_grad=True)
    text = torch.randn(2, D)  # float32 like the weights, bfloat16 image: what autocast produces
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = call(layer, image, text)
    output.float().sum().backward()
    assert output.shape == (2, C, H, W) and torch.isfinite(output.float()).all()
