"""The official configuration against an independent statement of the official graph's math.

The reference below restates the design notes' description of the official graph with
plain tensor ops: a concat + 1x1 conv fusion, an explicit per-head loop over a channel
split, TensorFlow "same" padding by hand, and batch norm in evaluation mode from its
running statistics. Only the weights are taken from the module.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from valfusion.layers import CompositeTransformer, JointAttentionalPreservation


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # These tensors are tiny: a second OpenMP thread only adds synchronisation, which on
    # a shared, oversubscribed machine costs up to 10x in wall time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise(module: nn.Module) -> None:
    """Non-trivial batch-norm statistics, and mixing weights that use both branches."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.4)
        module.w_sa.fill_(0.7)
        module.w_ja.fill_(1.3)


def _bn_eval(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + 1e-5)
    return (z - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def _conv_bn_relu(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A TF-slim conv under the backbone's arg scope: no bias, batch norm, ReLU."""
    return torch.relu(_bn_eval(F.conv2d(x, layer.conv.weight), layer.norm))


def _official_graph(block: CompositeTransformer, image: torch.Tensor, text: torch.Tensor):
    batch, channels, height, width = image.shape
    half = channels // 2
    tiled = text[:, :, None, None].expand(-1, -1, height, width)
    fused = _conv_bn_relu(torch.cat([image, tiled], dim=1), block.fusion.fuse)

    heads = []
    for i in range(2):
        group = fused[:, i * half : (i + 1) * half].reshape(batch, half, height * width)
        w_q, w_k, w_v = block.self_attention.qkv_weight[i].split(half, dim=0)
        q, k, v = (torch.einsum("oc,bcn->bno", w, group) for w in (w_q, w_k, w_v))
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(half), dim=-1)
        heads.append((attention @ v).transpose(1, 2).reshape(batch, half, height, width))
    f_sa = _conv_bn_relu(torch.cat(heads, dim=1), block.self_attention.proj)

    a_ch = _conv_bn_relu(fused.mean(dim=(2, 3), keepdim=True), block.preservation.channel_conv)
    pooled = fused.mean(dim=1, keepdim=True)
    tf_same = ((width - 1) // 2, width // 2, (height - 1) // 2, height // 2)
    a_sp = _conv_bn_relu(F.pad(pooled, tf_same), block.preservation.spatial_conv)
    f_ja = torch.sigmoid(a_ch) * torch.sigmoid(a_sp) * image
    return block.w_sa * f_sa + block.w_ja * f_ja


@pytest.mark.parametrize("size", [(4, 4), (3, 5), (2, 6)], ids=["4x4", "3x5", "2x6"])
def test_official_configuration_matches_restated_official_graph(size: tuple[int, int]) -> None:
    block = CompositeTransformer.official(8, 5, size).eval()
    _randomise(block)
    image, text = torch.randn(3, 8, *size), torch.randn(3, 5)
    with torch.no_grad():
        expected = _official_graph(block, image, text)
        torch.testing.assert_close(block(image, text), expected, rtol=1e-5, atol=1e-5)
        explicit, _ = block(image, text, return_attention=True)
        torch.testing.assert_close(explicit, expected, rtol=1e-5, atol=1e-5)


def test_spatial_gate_uses_tf_same_padding_on_an_even_map() -> None:
    block = JointAttentionalPreservation(3, spatial_kernel_size=(4, 4)).eval()
    fused, reference = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    conv = block.spatial_conv.conv
    # TF "same" for k = 4: one zero row/column before, two after.
    padded = F.pad(fused.mean(dim=1, keepdim=True), (1, 2, 1, 2))
    expected = torch.sigmoid(F.conv2d(padded, conv.weight, conv.bias))
    with torch.no_grad():
        _, attention = block(fused, reference, return_attention=True)
    torch.testing.assert_close(attention.spatial_gate, expected, rtol=1e-6, atol=1e-6)


def test_spatial_gate_differs_from_symmetric_padding_on_an_even_map() -> None:
    # Guards the test above: on an even kernel the padding side matters.
    block = JointAttentionalPreservation(3, spatial_kernel_size=(4, 4)).eval()
    fused, reference = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    conv = block.spatial_conv.conv
    padded = F.pad(fused.mean(dim=1, keepdim=True), (2, 1, 2, 1))
    other = torch.sigmoid(F.conv2d(padded, conv.weight, conv.bias))
    with torch.no_grad():
        _, attention = block(fused, reference, return_attention=True)
    assert not torch.allclose(attention.spatial_gate, other)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_official_gates_lie_in_half_open_interval_from_one_half(training: bool) -> None:
    block = CompositeTransformer.official(8, 5, (3, 4)).train(training)
    _, attention = block(torch.randn(4, 8, 3, 4), torch.randn(4, 5), return_attention=True)
    for gate in (attention.channel_gate, attention.spatial_gate):
        assert gate.ge(0.5).all() and gate.lt(1.0).all()


def test_official_configuration_uses_two_grouped_heads_and_attention_dropout() -> None:
    attention = CompositeTransformer.official(8, 5, 4).self_attention
    assert (attention.num_heads, attention.head_layout) == (2, "grouped")
    assert attention.qkv_bias is None
    assert attention.attn_drop.p == pytest.approx(0.1)
