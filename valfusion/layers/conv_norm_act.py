"""Convolution -> normalisation -> activation, with TensorFlow "same" padding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from valfusion._validation import check_positive_int

__all__ = [
    "ConvNormAct",
    "LayerFactory",
    "PointwiseConv2d",
    "compiling_without_convolutions",
    "is_channels_last",
    "pointwise_conv",
    "same_padding",
]

#: A callable building a module, e.g. ``nn.BatchNorm2d`` (called with the channel count)
#: or ``nn.ReLU`` (called with no argument).
LayerFactory = Callable[..., nn.Module]


def same_padding(kernel_size: int | tuple[int, int]) -> tuple[int, int, int, int]:
    """TensorFlow "same" padding for a stride-1 convolution.

    TF pads ``(k - 1) // 2`` before and ``k // 2`` after each spatial axis, so an even
    kernel gets one more row/column of zeros at the bottom/right.

    Args:
        kernel_size: ``k`` or ``(k_h, k_w)``.

    Returns:
        ``(left, right, top, bottom)``, the argument order of :func:`torch.nn.functional.pad`.
    """
    kh, kw = _pair(kernel_size)
    return (kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2


def compiling_without_convolutions() -> bool:
    """Whether TorchDynamo is tracing: :func:`torch.compile` (and a strict
    :func:`torch.export`), but not the default, non-strict export.

    The convolutions then trace as matrix products (:func:`pointwise_conv`,
    :class:`ConvNormAct`'s ``k x k`` conv). Inductor's CPU layout pass (PyTorch 2.14) makes
    every convolution's input and output channels-last, also with dynamic shapes; for such
    a tensor kept for backward it then either fails (``cannot determine truth value of
    Relational`` in ``ir.get_stride_order``, for a view) or hands the backward graph its
    concrete strides, which fixes the map size: every new size recompiles. An exported
    graph keeps its convolutions (ONNX ``Conv``).

    Returns:
        ``True`` while TorchDynamo traces a forward.
    """
    return torch.compiler.is_dynamo_compiling()


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D map stored ``channels_last`` (and not also plain contiguous).

    Args:
        x: any tensor.

    Returns:
        ``True`` when the memory of ``(B, C, H, W)`` is token-major ``(B, H, W, C)``.
    """
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution: ``y[b, :, i, j] = W x[b, :, i, j] + bias``.

    On a ``1 x 1`` map (a pooled vector), and on a ``channels_last`` map (token-major
    memory), this is one matrix product, which BLAS runs several times faster than the
    convolution kernel; a ``channels_last`` input gives a ``channels_last`` output. Other
    maps use the convolution, except under :func:`torch.compile`
    (see :func:`compiling_without_convolutions`).

    Args:
        x: ``(B, C_in, H, W)``.
        weight: ``(C_out, C_in, 1, 1)``.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(B, C_out, H, W)``.
    """
    if x.shape[2] == 1 and x.shape[3] == 1:
        out = F.linear(rearrange(x, "b c 1 1 -> b c"), rearrange(weight, "o i 1 1 -> o i"), bias)
        return rearrange(out, "b c -> b c 1 1")
    if is_channels_last(x) or compiling_without_convolutions():
        tokens = rearrange(x, "b c y x -> b y x c")  # a view (token-major if channels_last)
        out = F.linear(tokens, rearrange(weight, "o i 1 1 -> o i"), bias)
        return rearrange(out, "b y x c -> b c y x")
    return F.conv2d(x, weight, bias)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 :class:`torch.nn.Conv2d` (same parameters and state dict) that runs as a
    matrix product on pooled ``(B, C, 1, 1)`` inputs; see :func:`pointwise_conv`.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        bias: learn an additive bias.

    Shape:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the 1x1 conv to ``x`` of shape ``(B, C_in, H, W)``."""
        return pointwise_conv(x, self.weight, self.bias)


class _Conv2d(nn.Conv2d):
    """A :class:`torch.nn.Conv2d` (stride 1, one group) that :func:`torch.compile` traces as
    im2col and a matrix product, ``y[b, o, n] = sum_{i, u, v} W[o, i, u, v] x[b, i, n + (u, v)]``
    (see :func:`compiling_without_convolutions`). The columns hold ``C_in k_h k_w H W``
    numbers per sample: ``49 H W`` for the one-channel spatial gate's default 7x7 kernel,
    ``(H W)^2`` for the official whole-map kernel."""

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape ``(B, C_in, H, W)``."""
        if not compiling_without_convolutions():
            return self._conv_forward(x, self.weight, self.bias)
        if isinstance(self.padding, str):  # ConvNormAct always passes explicit sizes
            raise TypeError(f"padding: expected explicit sizes, got {self.padding!r}")
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        columns = F.unfold(x, (kh, kw), padding=(ph, pw))
        out = torch.matmul(rearrange(self.weight, "o i u v -> o (i u v)"), columns)
        if self.bias is not None:
            out = out + rearrange(self.bias, "o -> o 1")
        return rearrange(out, "b o (y x) -> b o y x", y=x.shape[2] + 2 * ph - kh + 1)


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))`` with stride 1 and TF "same" padding (output size = input size).

    The building block of every convolution in the composite transformer. The conv has a
    bias only when there is no normalisation layer (a batch norm's shift makes it redundant).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: ``k`` or ``(k_h, k_w)``; even sizes are padded as TensorFlow does.
        norm_layer: e.g. ``nn.BatchNorm2d``, called with ``C_out``; ``None`` for none.
        act_layer: e.g. ``nn.ReLU``, called with no argument; ``None`` for none.

    Shape:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        *,
        norm_layer: LayerFactory | None = None,
        act_layer: LayerFactory | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        kh, kw = _pair(kernel_size)
        check_positive_int(kh, "kernel_size")
        check_positive_int(kw, "kernel_size")
        left, right, top, bottom = same_padding((kh, kw))
        symmetric = left == right and top == bottom
        # Odd kernels pad inside the conv; even ones need an explicit asymmetric pad
        # (conv2d's padding="same" would warn on every call for them).
        self.pad = nn.Identity() if symmetric else nn.ZeroPad2d((left, right, top, bottom))
        bias = norm_layer is None
        if (kh, kw) == (1, 1):
            self.conv: nn.Conv2d = PointwiseConv2d(in_channels, out_channels, bias=bias)
        else:
            self.conv = _Conv2d(
                in_channels,
                out_channels,
                (kh, kw),
                padding=(top, left) if symmetric else 0,
                bias=bias,
            )
        self.norm = norm_layer(out_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply pad -> conv -> norm -> act.

        Args:
            x: ``(B, C_in, H, W)``.

        Returns:
            ``(B, C_out, H, W)``.
        """
        return self.act(self.norm(self.conv(self.pad(x))))
