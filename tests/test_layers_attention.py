"""The self-attentional transformation: both head layouts, both attention paths."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from valfusion.layers import SelfAttentionalTransformation

BATCH, CHANNELS, HEIGHT, WIDTH = 2, 8, 6, 6
TOKENS = HEIGHT * WIDTH


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # These tensors are tiny: a second OpenMP thread only adds synchronisation, which on
    # a shared, oversubscribed machine costs up to 10x in wall time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _RecordOutputShapes(TorchDispatchMode):
    """Record the shape of every tensor produced by an ATen op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self.shapes.append((str(func), tuple(leaf.shape)))
        return out


def _square_matrices(shapes: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    return [op for op, shape in shapes if shape[-2:] == (TOKENS, TOKENS)]


def _block(head_layout: str, **kwargs: object) -> SelfAttentionalTransformation:
    block = SelfAttentionalTransformation(CHANNELS, 2, head_layout=head_layout, **kwargs)
    with torch.no_grad():
        block.proj.conv.bias.uniform_(-0.5, 0.5)
    return block


def _map() -> torch.Tensor:
    return torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
@pytest.mark.parametrize("qkv_bias", [False, True], ids=["no_bias", "bias"])
def test_fused_and_explicit_attention_agree_in_fp32(head_layout: str, qkv_bias: bool) -> None:
    block = _block(head_layout, qkv_bias=qkv_bias).eval()
    x = 2.0 * _map()
    with torch.no_grad():
        fused = block(x)
        explicit, _ = block(x, return_weights=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
def test_attention_weights_are_row_stochastic(head_layout: str) -> None:
    _, weights = _block(head_layout).eval()(_map(), return_weights=True)
    assert weights.shape == (BATCH, 2, TOKENS, TOKENS)
    assert weights.ge(0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, 2, TOKENS))


def test_full_layout_is_standard_multi_head_attention() -> None:
    block = _block("full", qkv_bias=True).eval()
    x = _map()
    # Restated: q/k/v = W x + b over all channels, rows ordered (q|k|v, head, d).
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = tokens @ block.qkv_weight[0].T + block.qkv_bias[0]
    q, k, v = qkv.split(CHANNELS, dim=-1)
    d = CHANNELS // 2
    heads = []
    for i in range(2):
        qi, ki, vi = (m[..., i * d : (i + 1) * d] for m in (q, k, v))
        weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
        heads.append(weights @ vi)
    mixed = torch.cat(heads, dim=-1).transpose(1, 2).reshape(BATCH, CHANNELS, HEIGHT, WIDTH)
    expected = torch.nn.functional.conv2d(mixed, block.proj.conv.weight, block.proj.conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_grouped_head_weights_depend_only_on_their_channel_group() -> None:
    block = _block("grouped").eval()
    x = _map()
    changed = x.clone()
    changed[:, CHANNELS // 2 :] = torch.randn_like(changed[:, CHANNELS // 2 :])
    with torch.no_grad():
        _, weights = block(x, return_weights=True)
        _, changed_weights = block(changed, return_weights=True)
    assert torch.equal(changed_weights[:, 0], weights[:, 0])
    assert not torch.allclose(changed_weights[:, 1], weights[:, 1])


@pytest.mark.parametrize("num_heads", [2, 4])
def test_grouped_layout_divides_qkv_parameters_by_num_heads(num_heads: int) -> None:
    full = SelfAttentionalTransformation(CHANNELS, num_heads, head_layout="full")
    grouped = SelfAttentionalTransformation(CHANNELS, num_heads, head_layout="grouped")
    assert full.qkv_weight.numel() == 3 * CHANNELS**2
    assert grouped.qkv_weight.numel() == 3 * CHANNELS**2 // num_heads


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
def test_fused_path_never_builds_the_n_by_n_matrix(head_layout: str) -> None:
    block = _block(head_layout).train()
    x = _map().requires_grad_()
    with _RecordOutputShapes() as recorder:
        block(x).sum().backward()
    assert recorder.shapes, "the recorder saw no ops"
    assert _square_matrices(recorder.shapes) == []


def test_explicit_path_builds_the_n_by_n_matrix() -> None:
    # The detector used above does fire when the matrix exists.
    block = _block("grouped").train()
    with _RecordOutputShapes() as recorder:
        block(_map(), return_weights=True)[0].sum().backward()
    assert _square_matrices(recorder.shapes)


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
@pytest.mark.parametrize("return_weights", [False, True], ids=["fused", "explicit"])
def test_attention_dropout_is_inactive_in_eval_mode(head_layout: str, return_weights: bool) -> None:
    with_dropout = _block(head_layout, attn_drop=0.5).eval()
    without = _block(head_layout).eval()
    without.load_state_dict(with_dropout.state_dict())
    x = _map()
    with torch.no_grad():
        a = with_dropout(x, return_weights=return_weights)
        b = without(x, return_weights=return_weights)
    if return_weights:
        a, b = a[0], b[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("return_weights", [False, True], ids=["fused", "explicit"])
def test_attention_dropout_is_active_in_training_mode(return_weights: bool) -> None:
    with_dropout = _block("grouped", attn_drop=0.5).train()
    without = _block("grouped").train()
    without.load_state_dict(with_dropout.state_dict())
    x = _map()
    with torch.no_grad():
        a = with_dropout(x, return_weights=return_weights)
        b = without(x, return_weights=return_weights)
    if return_weights:
        a, b = a[0], b[0]
    assert not torch.allclose(a, b)
