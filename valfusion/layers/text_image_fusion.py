"""Text-image fusion ``F_c``: tile the text over the grid, concatenate, per-position MLP."""

from __future__ import annotations

import itertools
from typing import Literal, Protocol, overload

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from valfusion._validation import check_positive_int
from valfusion.layers._autograd import AutogradContext
from valfusion.layers._inputs import check_composer_inputs
from valfusion.layers.conv_norm_act import (
    ConvNormAct,
    LayerFactory,
    autocast_dtype,
    is_channel_major,
    is_channels_last,
    pointwise_conv,
    use_fused_kernels,
)

__all__ = ["TextImageFusion"]


class _TokenProjectionContext(AutogradContext, Protocol):
    @property
    def saved_tensors(self) -> tuple[Tensor, Tensor]:  # tokens, weight
        ...


class _TokenProjection(torch.autograd.Function):
    """``y[b, n] = W r[b, n] + u[b]`` on token-major ``r``, with ``r`` passed through.

    ``r`` ``(B, N, C)``, ``W`` ``(O, C)`` (any strides), per-sample term ``u`` ``(B, O)``:
    ``u`` is written into the output buffer and the GEMM accumulates onto it. The second
    output is ``r`` itself (an alias): a caller that needs ``r`` again uses the alias, so
    ``r`` has this one consumer and the backward sums both of its gradients (``dy W`` plus
    the alias's) in one GEMM instead of leaving autograd to add two ``(B, N, C)`` tensors.

    ``r`` is either contiguous (one ``(B N, C) x (C, O)`` product) or the token view of an
    NCHW map (channel-major: one product per sample reading ``(C, N)`` directly; ``dr``
    comes back in the same NCHW layout).
    """

    @staticmethod
    def forward(
        ctx: _TokenProjectionContext, tokens: Tensor, weight: Tensor, shift: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not is_channel_major(tokens):
            tokens = tokens.contiguous()
        batch, n, channels = tokens.shape
        out = tokens.new_empty(batch, n, weight.shape[0])
        out.copy_(shift[:, None, :].expand_as(out))
        if is_channel_major(tokens):
            out.baddbmm_(tokens, weight.t().expand(batch, -1, -1))
        else:
            out.view(batch * n, -1).addmm_(tokens.view(batch * n, channels), weight.t())
        ctx.save_for_backward(tokens, weight)
        return out, tokens

    @staticmethod
    @once_differentiable
    def backward(
        ctx: _TokenProjectionContext, grad: Tensor | None, grad_tokens: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        tokens, weight = ctx.saved_tensors
        batch, n, channels = tokens.shape
        grad_r = grad_w = grad_u = None
        if grad is None:
            return grad_tokens, None, None
        if is_channel_major(tokens):
            if ctx.needs_input_grad[0]:  # dr[b] (C, N) = W^T (C, O) dy[b]^T (O, N)
                product = (weight.t().expand(batch, -1, -1), grad.transpose(1, 2))
                if grad_tokens is None:
                    grad_r = torch.bmm(*product).transpose(1, 2)
                else:
                    grad_r = torch.baddbmm(grad_tokens.transpose(1, 2), *product).transpose(1, 2)
            if ctx.needs_input_grad[1]:  # dW = sum_b dy[b]^T (O, N) r[b] (N, C)
                grad_w = torch.mm(grad[0].t(), tokens[0])
                for b in range(1, batch):
                    grad_w.addmm_(grad[b].t(), tokens[b])
        else:
            grad2d = grad.reshape(batch * n, -1)
            if ctx.needs_input_grad[0]:
                grad_r = tokens.new_empty(tokens.shape)
                if grad_tokens is None:
                    torch.mm(grad2d, weight, out=grad_r.view(batch * n, channels))
                else:
                    torch.addmm(grad_tokens.reshape(batch * n, channels), grad2d, weight,
                                out=grad_r.view(batch * n, channels))
            if ctx.needs_input_grad[1]:
                grad_w = grad2d.t().mm(tokens.view(batch * n, channels))
        if ctx.needs_input_grad[2]:
            grad_u = grad.sum(dim=1)
        return grad_r, grad_w, grad_u


class TextImageFusion(nn.Module):
    """Fuse a text vector into an image feature map: ``X = F_c([F_r ; tile(t)])``.

    ``F_c`` is an MLP applied at every position, i.e. a stack of ``num_layers`` 1x1
    convolutions, each followed by ``norm_layer`` and ``act_layer``. The first one reads
    the ``C + D`` concatenated channels. With the defaults (one layer, batch norm, ReLU)
    this is the official graph's ``F_c``.

    The tiled text is never materialised: a 1x1 conv over ``[F_r ; tile(t)]`` equals
    ``W_r * F_r + tile(W_t t)``, which saves ``D / (C + D)`` of the first layer's work.
    The weight is still stored as one ``(hidden, C + D, 1, 1)`` conv (image columns first).
    A ``channels_last`` input runs every layer as one GEMM on its token-major memory and
    gives a ``channels_last`` output; :meth:`forward_tokens` takes token-major features
    directly.

    Args:
        image_channels: ``C``.
        text_channels: ``D``.
        hidden_channels: width of the inner layers (``num_layers > 1`` only);
            default ``C``.
        num_layers: number of 1x1 conv layers.
        out_channels: output channels; default ``C``.
        norm_layer: normalisation after each conv (``None`` for none).
        act_layer: activation after each normalisation (``None`` for none).

    Raises:
        ValueError: on a non-positive size, or ``hidden_channels`` with ``num_layers == 1``.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        hidden_channels: int | None = None,
        num_layers: int = 1,
        *,
        out_channels: int | None = None,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        check_positive_int(num_layers, "num_layers")
        if hidden_channels is not None:
            check_positive_int(hidden_channels, "hidden_channels")
            if num_layers == 1:
                raise ValueError(
                    "hidden_channels: only used with num_layers > 1, got "
                    f"hidden_channels={hidden_channels} with num_layers=1"
                )
        out_channels = image_channels if out_channels is None else out_channels
        self.out_channels = check_positive_int(out_channels, "out_channels")
        hidden = image_channels if hidden_channels is None else hidden_channels
        widths = [image_channels + text_channels] + [hidden] * (num_layers - 1) + [out_channels]
        layers = [
            ConvNormAct(c_in, c_out, 1, norm_layer=norm_layer, act_layer=act_layer)
            for c_in, c_out in itertools.pairwise(widths)
        ]
        self.fuse = layers[0]
        self.mlp = nn.Sequential(*layers[1:])

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Fuse.

        Args:
            image_features: ``F_r``, shape ``(B, C, H, W)``.
            text_features: ``t``, shape ``(B, D)``.

        Returns:
            ``X``, shape ``(B, C_out, H, W)`` (``C_out = C`` by default).

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features)
        if is_channels_last(image_features):
            tokens = rearrange(image_features, "b c y x -> b (y x) c")  # a view
            return self.forward_tokens(tokens, text_features, image_features.shape[2])
        conv = self.fuse.conv
        image_weight = conv.weight[:, : self.image_channels]
        text_weight = conv.weight[:, self.image_channels :, 0, 0]
        x = pointwise_conv(image_features, image_weight)
        x = x + rearrange(F.linear(text_features, text_weight, conv.bias), "b c -> b c 1 1")
        x = self.fuse.act(self.fuse.norm(x))
        return self.mlp(x)

    @overload
    def forward_tokens(
        self,
        image_tokens: Tensor,
        text_features: Tensor,
        height: int,
        *,
        return_tokens: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def forward_tokens(
        self,
        image_tokens: Tensor,
        text_features: Tensor,
        height: int,
        *,
        return_tokens: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    def forward_tokens(
        self,
        image_tokens: Tensor,
        text_features: Tensor,
        height: int,
        *,
        return_tokens: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fuse token-major image features (no input checks; see :meth:`forward`).

        Args:
            image_tokens: ``F_r`` as ``(B, N, C)`` tokens, ``N = H * W`` in row-major
                ``(y, x)`` order: contiguous (the first layer is one GEMM), or the token
                view of an NCHW map (one GEMM per sample reads it in place; other strides
                are copied).
            text_features: ``t``, shape ``(B, D)``.
            height: ``H``.
            return_tokens: also return an alias of ``image_tokens`` for the caller to use
                instead of them (its gradient is then summed into the first layer's input
                gradient, saving autograd one ``(B, N, C)`` addition).

        Returns:
            ``X``, shape ``(B, C_out, H, W)``, in ``channels_last`` memory; with
            ``return_tokens=True`` the pair ``(X, image_tokens alias)``.
        """
        conv = self.fuse.conv
        image_weight, text_weight = rearrange(conv.weight, "o i 1 1 -> o i").split(
            [self.image_channels, self.text_channels], dim=1
        )
        shift = F.linear(text_features, text_weight, conv.bias)  # (B, O): W_t t + b
        if use_fused_kernels(image_tokens) and autocast_dtype(image_tokens) is None:
            x, image_tokens = _TokenProjection.apply(image_tokens, image_weight, shift)
        else:
            # F.linear on 3-D input returns a non-view result, so the in-place broadcast add
            # of the per-sample text term is free of autograd bookkeeping copies.
            x = F.linear(image_tokens, image_weight)
            x.add_(rearrange(shift, "b c -> b 1 c"))
        x = rearrange(x, "b (y x) c -> b c y x", y=height)
        x = self.fuse.norm(x)
        if type(self.fuse.act) is nn.ReLU and isinstance(self.fuse.norm, nn.BatchNorm2d):
            # Batch norm's backward does not need its output: rectify that fresh tensor in
            # place rather than allocating another (B, N, C) buffer.
            x = F.relu(x, inplace=True)
        else:
            x = self.fuse.act(x)
        x = self.mlp(x)
        return (x, image_tokens) if return_tokens else x
