"""Properties of the composite transformer and of every composer built by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from valfusion.layers import (
    COMPOSERS,
    CompositeTransformer,
    TextImageFusion,
    build_composer,
)

PARAMETRISED = tuple(name for name in COMPOSERS if name != "image_only")
BATCH, CHANNELS, TEXT, HEIGHT, WIDTH = 4, 8, 5, 3, 4


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # These tensors are tiny: a second OpenMP thread only adds synchronisation, which on
    # a shared, oversubscribed machine costs up to 10x in wall time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batch_norm(module: nn.Module) -> None:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _composer(name: str, **kwargs: object) -> nn.Module:
    composer = build_composer(name, CHANNELS, TEXT, feature_size=(HEIGHT, WIDTH), **kwargs)
    _randomise_batch_norm(composer)
    if hasattr(composer, "w_sa"):
        with torch.no_grad():
            composer.w_sa.fill_(0.6)  # let the self-attention branch reach the output
    return composer


def _inputs(batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, CHANNELS, HEIGHT, WIDTH), torch.randn(batch, TEXT)


@pytest.mark.parametrize("name", COMPOSERS)
def test_sample_output_does_not_depend_on_other_samples_in_eval_mode(name: str) -> None:
    composer = _composer(name).eval()
    image, text = _inputs()
    changed_image, changed_text = image.clone(), text.clone()
    changed_image[1:] = torch.randn_like(image[1:])
    changed_text[1:] = torch.randn_like(text[1:])
    with torch.no_grad():
        first = composer(image, text)[0]
        first_after_change = composer(changed_image, changed_text)[0]
    torch.testing.assert_close(first_after_change, first, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", COMPOSERS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_output_is_equivariant_to_batch_permutation(name: str, training: bool) -> None:
    composer = _composer(name).train(training)
    for m in composer.modules():
        if isinstance(m, nn.Dropout):  # dropout masks are not equivariant
            m.p = 0.0
    image, text = _inputs()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        permuted_output = composer(image, text)[perm]
        output_of_permuted = composer(image[perm], text[perm])
    torch.testing.assert_close(output_of_permuted, permuted_output, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["val", "val_official"])
def test_output_is_joint_attention_times_reference_when_w_sa_is_zero(name: str) -> None:
    block = build_composer(name, CHANNELS, TEXT, feature_size=(HEIGHT, WIDTH)).eval()
    _randomise_batch_norm(block)
    with torch.no_grad():
        block.w_sa.zero_()
        block.w_ja.fill_(1.0)
        image, text = _inputs()
        output, attention = block(image, text, return_attention=True)
    # w_sa * F_sa vanishes exactly (w_sa = 0.0); what remains is one product per element,
    # which the layer may form in another order: a few float32 roundings apart at most.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(output, attention.joint_attention * image, rtol=4 * eps, atol=0.0)


@pytest.mark.parametrize("name", ["val", "val_official"])
def test_mixing_weights_start_at_w_sa_zero_and_w_ja_one(name: str) -> None:
    block = build_composer(name, CHANNELS, TEXT, feature_size=(HEIGHT, WIDTH))
    assert block.w_sa.item() == 0.0
    assert block.w_ja.item() == 1.0


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gates_lie_strictly_between_zero_and_one(training: bool) -> None:
    block = CompositeTransformer(CHANNELS, TEXT).train(training)
    image, text = _inputs()
    _, attention = block(3.0 * image, 3.0 * text, return_attention=True)
    for gate in (attention.channel_gate, attention.spatial_gate, attention.joint_attention):
        assert gate.gt(0).all() and gate.lt(1).all()


def test_paper_configuration_gates_are_not_bounded_below_by_one_half() -> None:
    # Contrast with the official configuration, whose ReLU'd logits keep gates >= 0.5.
    block = CompositeTransformer(CHANNELS, TEXT).eval()
    image, text = _inputs(16)
    _, attention = block(3.0 * image, 3.0 * text, return_attention=True)
    assert attention.spatial_gate.min() < 0.5 and attention.channel_gate.min() < 0.5


def test_return_attention_does_not_change_the_output() -> None:
    block = _composer("val").eval()
    image, text = _inputs()
    with torch.no_grad():
        plain = block(image, text)
        with_attention, _ = block(image, text, return_attention=True)
    torch.testing.assert_close(with_attention, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_layout", ["full", "grouped"])
@pytest.mark.parametrize("explicit", [False, True], ids=["fused", "explicit"])
def test_gradcheck_passes_in_float64(head_layout: str, explicit: bool) -> None:
    block = CompositeTransformer(4, 3, head_layout=head_layout).double().eval()
    _randomise_batch_norm(block)
    with torch.no_grad():
        block.w_sa.fill_(0.7)
    image = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def compose(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return block(x, t, return_attention=True)[0] if explicit else block(x, t)

    assert torch.autograd.gradcheck(compose, (image, text))


@pytest.mark.parametrize("name", PARAMETRISED)
def test_every_parameter_receives_a_nonzero_gradient(name: str) -> None:
    composer = _composer(name).train()
    image, text = _inputs()
    output = composer(image, text)
    (output * torch.randn_like(output)).sum().backward()
    for param_name, param in composer.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", PARAMETRISED)
def test_state_dict_round_trip_gives_identical_outputs(name: str) -> None:
    source = _composer(name).train()
    image, text = _inputs()
    source(image, text)  # move the batch-norm running statistics away from their init
    restored = build_composer(name, CHANNELS, TEXT, feature_size=(HEIGHT, WIDTH))
    restored.load_state_dict(source.state_dict())
    source.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(image, text), source(image, text))


def test_compiled_block_matches_eager() -> None:
    block = _composer("val").eval()
    image, text = _inputs()
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(image, text), block(image, text), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["val", "val_official"])
def test_bf16_autocast_on_cpu_stays_finite(name: str) -> None:
    block = _composer(name).train()
    image, text = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = block(image, text)
    output.float().sum().backward()
    assert torch.isfinite(output).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("name", ["val", "val_official"])
def test_bf16_autocast_on_cpu_stays_close_to_fp32(name: str) -> None:
    block = _composer(name).eval()
    image, text = _inputs()
    with torch.no_grad():
        reference = block(image, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = block(image, text)
    torch.testing.assert_close(output.float(), reference, rtol=0.05, atol=0.05)


def test_fusion_is_a_pointwise_mlp_over_image_and_tiled_text() -> None:
    fusion = TextImageFusion(CHANNELS, TEXT, hidden_channels=6, num_layers=2).eval()
    _randomise_batch_norm(fusion)
    image, text = _inputs()

    def conv_bn_relu(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        bn = layer.norm
        z = F.conv2d(x, layer.conv.weight)
        z = (z - bn.running_mean[:, None, None]) / torch.sqrt(
            bn.running_var[:, None, None] + bn.eps
        )
        return torch.relu(z * bn.weight[:, None, None] + bn.bias[:, None, None])

    tiled = text[:, :, None, None].expand(-1, -1, HEIGHT, WIDTH)
    expected = conv_bn_relu(torch.cat([image, tiled], dim=1), fusion.fuse)
    expected = conv_bn_relu(expected, fusion.mlp[0])
    with torch.no_grad():
        torch.testing.assert_close(fusion(image, text), expected, rtol=1e-5, atol=1e-5)
