"""The benchmark references compute the same function as valfusion's layers (copied weights).

A speed-up over a reference only means something if both sides compute the same thing, so
every reference built with ``from_layer`` (or from a part) must reproduce the layer's output
and gradients, for every configuration the benchmarks use and those the references claim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.references import (
    MultiheadAttentionPortComposite,
    MultiheadAttentionPortSelfAttention,
    OfficialGraphComposite,
    OfficialGraphFusion,
    OfficialGraphPreservation,
    OfficialGraphSelfAttention,
)
from valfusion.layers import CompositeTransformer, TextImageFusion

BATCH, CHANNELS, TEXT, HEIGHT, WIDTH = 3, 8, 5, 4, 6

CONFIGS = {
    "paper": {},
    "full_heads_bias": {"head_layout": "full", "qkv_bias": True},
    "four_heads": {"num_heads": 4},
    "norm_act_everywhere": {
        "proj_norm_act": True,
        "gate_norm_act": True,
        "spatial_kernel_size": (4, 6),
    },
}
REFERENCES = {"official_graph": OfficialGraphComposite, "mha_port": MultiheadAttentionPortComposite}


def _layer(config: str) -> CompositeTransformer:
    layer = CompositeTransformer(CHANNELS, TEXT, **CONFIGS[config])
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        layer.w_sa.fill_(0.7)  # both branches reach the output
        layer.w_ja.fill_(1.2)
    return layer


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, requires_grad=True)
    text = torch.randn(BATCH, TEXT, requires_grad=True)
    return image, text


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_matches_layer_in_eval_mode(config: str, reference: str) -> None:
    layer = _layer(config).eval()
    ref = REFERENCES[reference].from_layer(layer).eval()
    image, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ref(image, text), layer(image, text), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_matches_layer_in_training_mode(config: str, reference: str) -> None:
    # Batch statistics in every batch norm: the same normalisation on both sides.
    layer = _layer(config).train()
    ref = REFERENCES[reference].from_layer(layer).train()
    image, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ref(image, text), layer(image, text), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_gives_the_layers_input_gradients(reference: str) -> None:
    layer = _layer("paper").train()
    ref = REFERENCES[reference].from_layer(layer).train()
    image, text = _inputs()
    weight = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    expected = torch.autograd.grad((layer(image, text) * weight).sum(), (image, text))
    got = torch.autograd.grad((ref(image, text) * weight).sum(), (image, text))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_gives_the_layers_mixing_weight_gradients(reference: str) -> None:
    layer = _layer("paper").train()
    ref = REFERENCES[reference].from_layer(layer).train()
    image, text = _inputs()
    weight = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    expected = torch.autograd.grad((layer(image, text) * weight).sum(), (layer.w_sa, layer.w_ja))
    got = torch.autograd.grad((ref(image, text) * weight).sum(), (ref.w_sa, ref.w_ja))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", ["paper", "full_heads_bias", "four_heads"])
def test_official_graph_self_attention_matches_the_layers_part(config: str) -> None:
    part = _layer(config).self_attention.eval()
    x = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(
            OfficialGraphSelfAttention(part).eval()(x), part(x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("config", ["paper", "full_heads_bias", "four_heads"])
def test_mha_port_self_attention_matches_the_layers_part(config: str) -> None:
    part = _layer(config).self_attention.eval()
    x = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(
            MultiheadAttentionPortSelfAttention(part).eval()(x), part(x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("config", ["paper", "norm_act_everywhere"])
def test_official_graph_preservation_matches_the_layers_part(config: str) -> None:
    part = _layer(config).preservation.eval()
    fused = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    reference = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(
            OfficialGraphPreservation(part).eval()(fused, reference),
            part(fused, reference),
            rtol=1e-5,
            atol=1e-5,
        )


def test_official_graph_fusion_matches_the_layers_fusion() -> None:
    fusion = _layer("paper").fusion.eval()
    image, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            OfficialGraphFusion(fusion).eval()(image, text),
            fusion(image, text),
            rtol=1e-5,
            atol=1e-5,
        )


def test_mha_port_projects_every_channel_for_a_grouped_layer() -> None:
    # The port's structure: full C x C query/key/value maps; a grouped layout shows up as
    # zero off-diagonal blocks, which it still multiplies.
    part = _layer("paper").self_attention
    port = MultiheadAttentionPortSelfAttention(part)
    weight = port.attention.in_proj_weight
    assert weight.shape == (3 * CHANNELS, CHANNELS)
    half = CHANNELS // 2
    query = weight[:CHANNELS]
    assert torch.count_nonzero(query[:half, half:]) == 0
    assert torch.count_nonzero(query[:half, :half]) == half * half


def test_official_graph_heads_project_only_their_channel_group() -> None:
    part = _layer("paper").self_attention
    reference = OfficialGraphSelfAttention(part)
    assert [conv.in_channels for conv in reference.query] == [CHANNELS // 2, CHANNELS // 2]


def test_reference_fusion_rejects_more_than_one_layer() -> None:
    fusion = TextImageFusion(CHANNELS, TEXT, hidden_channels=6, num_layers=2)
    with pytest.raises(ValueError, match="num_layers=1"):
        OfficialGraphFusion(fusion)


@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_matches_layer_fed_channels_last_maps(reference: str) -> None:
    # A channels_last map takes the layer's transpose-free path; same function.
    layer = _layer("paper").train()
    ref = REFERENCES[reference].from_layer(layer).train()
    image, text = _inputs()
    with torch.no_grad():
        expected = ref(image, text)
        got = layer(image.contiguous(memory_format=torch.channels_last), text)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layer_keeps_a_channels_last_input_channels_last() -> None:
    layer = _layer("paper").eval()
    image, text = _inputs()
    with torch.no_grad():
        out = layer(image.contiguous(memory_format=torch.channels_last), text)
        plain = layer(image, text)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert plain.is_contiguous()


@pytest.mark.parametrize("reference", REFERENCES)
def test_reference_gives_the_layers_gradients_for_channels_last_maps(reference: str) -> None:
    layer = _layer("paper").train()
    ref = REFERENCES[reference].from_layer(layer).train()
    image, text = _inputs()
    last = image.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    expected = torch.autograd.grad((ref(image, text) * weight).sum(), (image, text))
    got = torch.autograd.grad((layer(last, text) * weight).sum(), (last, text))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", ["paper", "four_heads", "full_heads_bias"])
def test_parameter_gradients_match_the_official_graph_reference(config: str) -> None:
    # Every weight of the layer against the same weight of the reference, by name.
    layer = _layer(config).train()
    ref = OfficialGraphComposite.from_layer(layer).train()
    image, text = _inputs()
    weight = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    (layer(image, text) * weight).sum().backward()
    (ref(image, text) * weight).sum().backward()
    sa, d = layer.self_attention, layer.self_attention.head_dim
    pairs = {
        "fusion": (layer.fusion.fuse.conv.weight.grad, ref.fusion.conv.weight.grad),
        "proj": (sa.proj.conv.weight.grad, ref.self_attention.proj.weight.grad),
        "proj bias": (sa.proj.conv.bias.grad, ref.self_attention.proj.bias.grad),
        "channel gate": (layer.preservation.channel_conv.conv.weight.grad,
                         ref.preservation.channel_conv.weight.grad),
        "spatial gate": (layer.preservation.spatial_conv.conv.weight.grad,
                         ref.preservation.spatial_conv.weight.grad),
    }
    grouped = sa.head_layout == "grouped"
    for i in range(sa.num_heads):
        group, offset, stride = (i, 0, d) if grouped else (0, i * d, CHANNELS)
        for j, convs in enumerate((ref.self_attention.query, ref.self_attention.key,
                                   ref.self_attention.value)):
            rows = slice(j * stride + offset, j * stride + offset + d)
            pairs[f"head {i} map {j}"] = (
                sa.qkv_weight.grad[group, rows], convs[i].weight.grad[:, :, 0, 0]
            )
            if sa.qkv_bias is not None:
                pairs[f"head {i} map {j} bias"] = (sa.qkv_bias.grad[group, rows],
                                                   convs[i].bias.grad)
    for name, (got, expected) in pairs.items():
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=name)


LARGE = 16  # a 16 x 16 map: N = 256 positions, where NCHW maps are used in place


def _large_inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randn(2, CHANNELS, LARGE, LARGE, dtype=dtype, requires_grad=True)
    text = torch.randn(2, TEXT, dtype=dtype, requires_grad=True)
    return image, text


@pytest.mark.parametrize("memory_format", ["nchw", "channels_last"])
def test_reference_gives_the_layers_output_and_gradients_on_a_large_map(
    memory_format: str,
) -> None:
    layer = _layer("paper").double().train()
    ref = OfficialGraphComposite.from_layer(layer).train()
    image, text = _large_inputs()
    fed = image
    if memory_format == "channels_last":
        fed = image.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(2, CHANNELS, LARGE, LARGE, dtype=torch.float64)
    out = layer(fed, text)
    expected_out = ref(image, text)
    torch.testing.assert_close(out, expected_out)
    params = [layer.fusion.fuse.conv.weight, layer.self_attention.qkv_weight,
              layer.self_attention.proj.conv.weight, layer.w_sa, layer.w_ja]
    got = torch.autograd.grad((out * weight).sum(), [fed, text, *params])
    ref_params = [ref.fusion.conv.weight, None, ref.self_attention.proj.weight, ref.w_sa,
                  ref.w_ja]
    expected = torch.autograd.grad(
        (expected_out * weight).sum(), [image, text, *(p for p in ref_params if p is not None)]
    )
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2])  # fusion weight (image and text columns)
    torch.testing.assert_close(got[4], expected[3])  # projection
    torch.testing.assert_close(got[5], expected[4])  # w_sa
    torch.testing.assert_close(got[6], expected[5])  # w_ja


class _RecordCopies(TorchDispatchMode):
    """Record every clone/copy_ whose source has ``size`` elements (a re-layout of a map)."""

    def __init__(self, size: int, copies: list[str]) -> None:
        super().__init__()
        self.size, self.copies = size, copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        source = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
        relayout = func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_)
        # A broadcast source (a zero stride) is a fill, not a transpose.
        if relayout and source.numel() == self.size and 0 not in source.stride():
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


def test_large_nchw_map_is_never_transposed_forward_or_backward() -> None:
    # From PER_SAMPLE_MIN_TOKENS positions on, an NCHW map is read and written in place:
    # no op copies a (B, C, H, W)-sized tensor into another buffer, in either pass.
    copies: list[str] = []
    size = 2 * CHANNELS * LARGE * LARGE

    layer = _layer("paper").train()
    image, text = _large_inputs(torch.float32)
    with _RecordCopies(size, copies):
        out = layer(image, text)
        out.backward(torch.randn_like(out))
    assert out.is_contiguous()
    assert copies == []


def test_small_nchw_map_is_transposed_once_each_way() -> None:
    # Guards the test above: the detector does see the transposes of the small-map path.
    copies: list[str] = []
    size = BATCH * CHANNELS * HEIGHT * WIDTH

    layer = _layer("paper").train()
    image, text = _inputs()
    with _RecordCopies(size, copies):
        out = layer(image, text)
        out.backward(torch.randn_like(out))
    assert len(copies) >= 2
