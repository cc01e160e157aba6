"""Baselines with the composer signature, the registry and the multi-level container."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from valfusion.layers import (
    COMPOSERS,
    TIRG,
    Combiner,
    CompositeAttention,
    CompositeTransformer,
    ConcatFusion,
    ImageOnly,
    MultiLevelComposer,
    TextOnly,
    build_composer,
)

C, D = 6, 4


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # These tensors are tiny: a second OpenMP thread only adds synchronisation, which on
    # a shared, oversubscribed machine costs up to 10x in wall time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batch_norm(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _bn_eval(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Batch norm of (B, K) vectors in evaluation mode."""
    return (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def _linear(z: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return z @ conv.weight[:, :, 0, 0].T + conv.bias


def test_tirg_matches_its_published_formula_on_pooled_vectors() -> None:
    tirg = TIRG(C, D, hidden_channels=7).eval()
    _randomise_batch_norm(tirg)
    with torch.no_grad():
        tirg.w_gate.fill_(0.8)
        tirg.w_res.fill_(3.0)
    x, t = torch.randn(5, C), torch.randn(5, D)
    merged = torch.cat([x, t], dim=1)
    gate = _linear(torch.relu(_bn_eval(merged, tirg.gate[0])), tirg.gate[2])
    hidden = torch.relu(_linear(torch.relu(_bn_eval(merged, tirg.residual[0])), tirg.residual[2]))
    residual = _linear(hidden, tirg.residual[4])
    expected = 0.8 * torch.sigmoid(gate) * x + 3.0 * residual
    with torch.no_grad():
        torch.testing.assert_close(tirg(x, t), expected, rtol=1e-5, atol=1e-5)


def test_tirg_pooled_composes_the_spatial_mean_by_the_published_formula() -> None:
    tirg = build_composer("tirg_pooled", C, D, hidden_channels=7).eval()
    _randomise_batch_norm(tirg)
    with torch.no_grad():
        tirg.w_gate.fill_(0.8)
        tirg.w_res.fill_(3.0)
    image, t = torch.randn(2, C, 3, 4), torch.randn(2, D)
    x = image.sum(dim=(2, 3)) / 12  # the mean over the 3 x 4 positions
    merged = torch.cat([x, t], dim=1)
    gate = _linear(torch.relu(_bn_eval(merged, tirg.gate[0])), tirg.gate[2])
    hidden = torch.relu(_linear(torch.relu(_bn_eval(merged, tirg.residual[0])), tirg.residual[2]))
    vector = 0.8 * torch.sigmoid(gate) * x + 3.0 * _linear(hidden, tirg.residual[4])
    with torch.no_grad():
        out = tirg(image, t)
    assert out.shape == image.shape
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(out[:, :, i, j], vector, rtol=1e-5, atol=1e-5)


def test_tirg_pooled_sends_every_position_the_same_gradient() -> None:
    tirg = build_composer("tirg_pooled", C, D).train()
    image = torch.randn(3, C, 2, 5, requires_grad=True)
    (tirg(image, torch.randn(3, D)) * torch.randn(3, C, 1, 1)).sum().backward()
    grad = image.grad
    assert grad is not None and grad.abs().sum() > 0
    torch.testing.assert_close(grad, grad[:, :, :1, :1].expand_as(grad))


def test_tirg_pool_option_is_validated() -> None:
    with pytest.raises(ValueError, match="pool"):
        TIRG(C, D, pool="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="always pools"):
        build_composer("tirg_pooled", C, D, pool=False)


def test_tirg_pooled_on_pooled_vectors_is_tirg() -> None:
    torch.manual_seed(0)
    pooled = build_composer("tirg_pooled", C, D).eval()
    plain = TIRG(C, D).eval()
    plain.load_state_dict(pooled.state_dict())
    x, t = torch.randn(4, C), torch.randn(4, D)
    with torch.no_grad():
        assert torch.equal(pooled(x, t), plain(x, t))


def test_tirg_weights_start_as_in_the_authors_code() -> None:
    tirg = TIRG(C, D)
    assert (tirg.w_gate.item(), tirg.w_res.item()) == (1.0, 10.0)


@pytest.mark.parametrize("name", ["tirg", "concat", "image_only", "text_only"])
def test_composer_on_a_map_equals_composer_on_each_position(name: str) -> None:
    composer = build_composer(name, C, D).eval()
    _randomise_batch_norm(composer)
    image, text = torch.randn(2, C, 3, 2), torch.randn(2, D)
    positions = image.permute(0, 2, 3, 1).reshape(-1, C)  # (B*H*W, C), batch-major
    repeated_text = text.repeat_interleave(6, dim=0)
    with torch.no_grad():
        per_position = composer(positions, repeated_text).reshape(2, 3, 2, C).permute(0, 3, 1, 2)
        torch.testing.assert_close(composer(image, text), per_position, rtol=1e-5, atol=1e-5)


def test_concat_fusion_is_a_two_layer_mlp_over_the_concatenation() -> None:
    fusion = ConcatFusion(C, D, hidden_channels=9).eval()
    _randomise_batch_norm(fusion)
    x, t = torch.randn(5, C), torch.randn(5, D)
    first = fusion.hidden.fuse
    hidden = torch.cat([x, t], dim=1) @ first.conv.weight[:, :, 0, 0].T
    hidden = torch.relu(_bn_eval(hidden, first.norm))
    expected = _linear(hidden, fusion.out)
    with torch.no_grad():
        torch.testing.assert_close(fusion(x, t), expected, rtol=1e-5, atol=1e-5)


def test_image_only_returns_the_image_features_unchanged() -> None:
    image = torch.randn(2, C, 3, 3)
    assert torch.equal(ImageOnly(C, D)(image, torch.randn(2, D)), image)


def test_text_only_tiles_the_projected_text_over_the_grid() -> None:
    text_only = TextOnly(C, D)
    text = torch.randn(2, D)
    projected = text @ text_only.proj.weight.T + text_only.proj.bias
    with torch.no_grad():
        output = text_only(torch.randn(2, C, 3, 4), text)
    torch.testing.assert_close(output, projected[:, :, None, None].expand(2, C, 3, 4))


def test_text_only_ignores_the_image_values() -> None:
    text_only = TextOnly(C, D)
    text = torch.randn(2, D)
    with torch.no_grad():
        a = text_only(torch.randn(2, C, 3, 4), text)
        b = text_only(torch.randn(2, C, 3, 4), text)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["tirg", "tirg_pooled", "concat", "image_only", "text_only"])
def test_baselines_return_no_attention_maps(name: str) -> None:
    composer = build_composer(name, C, D).eval()
    image, text = torch.randn(2, C, 3, 3), torch.randn(2, D)
    output, attention = composer(image, text, return_attention=True)
    assert attention is None
    assert output.shape == image.shape


def test_build_composer_builds_the_named_class() -> None:
    expected = {
        "val": CompositeTransformer,
        "val_official": CompositeTransformer,
        "tirg": TIRG,
        "tirg_pooled": TIRG,
        "concat": ConcatFusion,
        "combiner": Combiner,
        "image_only": ImageOnly,
        "text_only": TextOnly,
    }
    assert set(COMPOSERS) == set(expected)
    for name in COMPOSERS:
        assert type(build_composer(name, C, D, feature_size=(3, 3))) is expected[name]
    assert build_composer("tirg_pooled", C, D).pool and not build_composer("tirg", C, D).pool


def test_build_composer_passes_options_to_the_constructor() -> None:
    block = build_composer("val", C, D, num_heads=3, head_layout="full")
    assert (block.self_attention.num_heads, block.self_attention.head_layout) == (3, "full")


def test_multi_level_composer_applies_each_level_to_its_own_map() -> None:
    composer = MultiLevelComposer.build("val", [C, C, 2 * C], D).eval()
    maps = [torch.randn(2, C, 4, 4), torch.randn(2, C, 2, 2), torch.randn(2, 2 * C, 1, 1)]
    text = torch.randn(2, D)
    with torch.no_grad():
        outputs = composer(maps, text)
        for level, x, out in zip(composer.levels, maps, outputs):
            assert torch.equal(out, level(x, text))


def test_multi_level_build_ties_official_levels_to_their_feature_sizes() -> None:
    composer = MultiLevelComposer.build("val_official", [C, 2 * C], D, feature_sizes=[4, (2, 3)])
    assert [level.feature_size for level in composer.levels] == [(4, 4), (2, 3)]


def test_multi_level_return_attention_gives_one_entry_per_level() -> None:
    composer = MultiLevelComposer([CompositeTransformer(C, D), TIRG(C, D)]).eval()
    maps = [torch.randn(2, C, 3, 3), torch.randn(2, C, 2, 2)]
    outputs, attentions = composer(maps, torch.randn(2, D), return_attention=True)
    assert [o.shape for o in outputs] == [m.shape for m in maps]
    assert isinstance(attentions[0], CompositeAttention) and attentions[1] is None
