"""ViT / CLIP patch tokens: the rule for prefix tokens, the equality with the map path, errors.

The rule, the same in every part: the ``num_prefix_tokens`` first tokens pass through
unchanged, and the ``H * W`` patch tokens are composed exactly as the map ``(B, C, H, W)``
they form. On tokens and on the map the layers run the same operations on the same
numbers in another memory layout (token-major instead of NCHW), so results differ only by
the summation order inside the matrix products: a few fp32 roundings of sums of at most
``C + D`` terms of order one, well inside ``rtol = atol = 1e-5`` at these sizes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from einops import rearrange
from torch import Tensor, nn

from valfusion.layers import (
    CompositeTransformer,
    JointAttentionalPreservation,
    SelfAttentionalTransformation,
    TextImageFusion,
    _kernels,
    use_backend,
)

ROOT = Path(__file__).resolve().parents[1]
B, C, D, H, W = 2, 8, 5, 3, 4
TOL = {"rtol": 1e-5, "atol": 1e-5}
BACKENDS = ("reference", "fused", "fused/token-major")


@contextmanager
def backend(name: str) -> Iterator[None]:
    """The reference, the fused kernels with the CPU plan, or with CUDA's (forced on CPU)."""
    saved = dict(_kernels.DEVICE_PLANS)
    if name == "fused/token-major":
        for key in [key for key in _kernels.DEVICE_PLANS if key[0] == "cpu"]:
            _kernels.DEVICE_PLANS[key] = _kernels.TOKEN_MAJOR
    try:
        with use_backend("reference" if name == "reference" else "fused"):
            yield
    finally:
        _kernels.DEVICE_PLANS.update(saved)


def _tokens(image: Tensor, prefix: Tensor) -> Tensor:
    return torch.cat([prefix, rearrange(image, "b c y x -> b (y x) c")], dim=1)


def _patches(tokens: Tensor, num_prefix: int) -> Tensor:
    return rearrange(tokens[:, num_prefix:], "b (y x) c -> b c y x", y=H)


def _parts() -> dict[str, Callable[..., Tensor]]:
    text = torch.randn(B, D)
    fused_map = torch.randn(B, C, H, W)
    composite = CompositeTransformer(C, D, w_sa_init=0.6).eval()
    fusion = TextImageFusion(C, D).eval()
    attention = SelfAttentionalTransformation(C).eval()
    preservation = JointAttentionalPreservation(C).eval()

    def preserve(x: Tensor, **kw: object) -> Tensor:
        if "grid_size" in kw:  # the fused map as tokens too, with other prefix values
            fused = _tokens(fused_map, torch.full((B, int(kw.get("num_prefix_tokens", 0)), C), 9.0))
            return preservation(fused, x, **kw)
        return preservation(fused_map, x)

    return {
        "composite": lambda x, **kw: composite(x, text, **kw),
        "fusion": lambda x, **kw: fusion(x, text, **kw),
        "self_attention": lambda x, **kw: attention(x, **kw),
        "preservation": preserve,
    }


PARTS = ("composite", "fusion", "self_attention", "preservation")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("num_prefix", [0, 1, 2])
@pytest.mark.parametrize("part", PARTS)
def test_tokens_give_the_map_output_and_pass_prefix_tokens_through(
    part: str, num_prefix: int, name: str
) -> None:
    call = _parts()[part]
    image = torch.randn(B, C, H, W)
    prefix = torch.randn(B, num_prefix, C)
    with torch.no_grad(), backend(name):
        expected = call(image)
        out = call(_tokens(image, prefix), grid_size=(H, W), num_prefix_tokens=num_prefix)
    assert out.shape == (B, num_prefix + H * W, C)
    assert torch.equal(out[:, :num_prefix], prefix)  # passed through, not recomputed
    torch.testing.assert_close(_patches(out, num_prefix), expected, **TOL)


@pytest.mark.parametrize("name", BACKENDS)
def test_token_gradients_equal_the_map_gradients(name: str) -> None:
    block = CompositeTransformer(C, D, w_sa_init=0.6).train()
    image = torch.randn(B, C, H, W, requires_grad=True)
    tokens = _tokens(image.detach(), torch.randn(B, 1, C)).requires_grad_()
    text = torch.randn(B, D)
    cotangent = torch.randn(B, C, H, W)
    with backend(name):
        (block(image, text) * cotangent).sum().backward()
        expected = [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        out = block(tokens, text, grid_size=(H, W), num_prefix_tokens=1)
        (_patches(out, 1) * cotangent).sum().backward()
    assert tokens.grad is not None and image.grad is not None
    torch.testing.assert_close(_patches(tokens.grad, 1), image.grad, **TOL)
    assert torch.count_nonzero(tokens.grad[:, 0]) == 0  # the class token does not enter
    for got, want in zip((p.grad for p in block.parameters()), expected):
        torch.testing.assert_close(got, want, **TOL)


def test_a_square_grid_may_be_given_as_one_int() -> None:
    block = SelfAttentionalTransformation(C).eval()
    tokens = torch.randn(B, 1 + 9, C)
    with torch.no_grad():
        torch.testing.assert_close(
            block(tokens, grid_size=3, num_prefix_tokens=1),
            block(tokens, grid_size=(3, 3), num_prefix_tokens=1),
            rtol=0.0, atol=0.0,
        )


def test_return_attention_on_tokens_is_over_the_patches() -> None:
    block = CompositeTransformer(C, D, w_sa_init=0.6).eval()
    tokens, text = torch.randn(B, 1 + H * W, C), torch.randn(B, D)
    with torch.no_grad():
        plain = block(tokens, text, grid_size=(H, W), num_prefix_tokens=1)
        out, attention = block(
            tokens, text, grid_size=(H, W), num_prefix_tokens=1, return_attention=True
        )
    assert attention.self_attention is not None
    assert attention.self_attention.shape == (B, 2, H * W, H * W)
    assert attention.spatial_gate.shape == (B, 1, H, W)
    assert torch.equal(out[:, 0], tokens[:, 0])
    torch.testing.assert_close(out, plain, **TOL)


def test_bf16_autocast_on_tokens_returns_bf16_with_the_prefix_cast() -> None:
    block = CompositeTransformer(C, D)
    tokens, text = torch.randn(B, 1 + H * W, C), torch.randn(B, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(tokens, text, grid_size=(H, W), num_prefix_tokens=1)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[:, 0], tokens[:, 0].to(torch.bfloat16))


def _raises(*parts: str) -> pytest.RaisesContext[ValueError]:
    return pytest.raises(ValueError, match=".*".join(re.escape(p) for p in parts))


@pytest.mark.parametrize("part", PARTS)
def test_tokens_without_grid_size_are_rejected_naming_grid_size(part: str) -> None:
    with _raises("a token sequence (B, N, C) with grid_size=(H, W)", "(2, 13, 8)"):
        _parts()[part](torch.randn(B, 1 + H * W, C))


@pytest.mark.parametrize("part", PARTS)
def test_a_grid_that_does_not_fit_the_tokens_is_rejected(part: str) -> None:
    with _raises("grid_size: expected H * W = N - num_prefix_tokens = 13 - 0 = 13",
                 "grid_size=(3, 4) (12)", "(2, 13, 8)"):
        _parts()[part](torch.randn(B, 1 + H * W, C), grid_size=(H, W))


def test_grid_size_with_a_map_is_rejected() -> None:
    with _raises("grid_size: only for a token sequence (B, N, C)", "(2, 8, 3, 4)"):
        CompositeTransformer(C, D)(torch.randn(B, C, H, W), torch.randn(B, D), grid_size=(H, W))


@pytest.mark.parametrize("value", [-1, 1.0, True])
def test_a_bad_num_prefix_tokens_is_rejected(value: object) -> None:
    with _raises("num_prefix_tokens: expected an int >= 0", repr(value)):
        CompositeTransformer(C, D)(
            torch.randn(B, 1 + H * W, C), torch.randn(B, D), grid_size=(H, W),
            num_prefix_tokens=value,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("grid", [(0, 4), (3,), "3x4"])
def test_a_malformed_grid_size_is_rejected(grid: object) -> None:
    with _raises("grid_size: expected a positive int H or a pair (H, W)", repr(grid)):
        block = SelfAttentionalTransformation(C)
        block(torch.randn(B, H * W, C), grid_size=grid)  # type: ignore[arg-type]


def test_a_grid_other_than_feature_size_is_rejected() -> None:
    block = CompositeTransformer.official(C, D, (H, W))
    with _raises("expected feature map size (H, W) = (3, 4)", "grid_size=(4, 3)"):
        block(torch.randn(B, 1 + H * W, C), torch.randn(B, D), grid_size=(4, 3),
              num_prefix_tokens=1)


def test_prefix_tokens_need_fusion_output_width_equal_to_input_width() -> None:
    fusion = TextImageFusion(C, D, hidden_channels=6, num_layers=2, out_channels=6)
    with _raises("num_prefix_tokens", "out_channels == image_channels", "out_channels=6"):
        fusion(torch.randn(B, 1 + H * W, C), torch.randn(B, D), grid_size=(H, W),
               num_prefix_tokens=1)


def test_the_vit_how_to_example_runs() -> None:
    # Runs exactly the code of docs/how-to/vit-tokens.md and checks what it builds.
    page = (ROOT / "docs" / "how-to" / "vit-tokens.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "vit-tokens.md", "exec"), namespace)
    model, embedding = namespace["model"], namespace["embedding"]
    assert isinstance(model, nn.Module) and isinstance(embedding, Tensor)
    assert embedding.shape == (2, 192) and torch.isfinite(embedding).all()
    composers = model.composers  # type: ignore[attr-defined]
    assert sorted(composers) == ["2", "5", "8"]
    for composer in composers.values():
        assert isinstance(composer, CompositeTransformer)
        assert composer.w_sa.grad is not None and composer.w_sa.grad != 0
