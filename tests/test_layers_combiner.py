"""CLIP4Cir's Combiner as a composer: its formula, its shapes and checks, its gradients, and
its place in the registry and the reference model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from valfusion.encoders import Vocabulary
from valfusion.layers import COMPOSERS, Combiner, build_composer
from valfusion.models import VAL, VALConfig

C, D = 6, 4


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Tiny tensors: a second OpenMP thread only adds synchronisation on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _published_formula(combiner: Combiner, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CLIP4Cir's combine_features without dropout and without the final normalisation,
    written from the layer's weights with explicit matrix products."""

    def linear(z: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        out = z @ layer.weight.T
        return out if layer.bias is None else out + layer.bias

    (w_t,) = _linears(combiner.text_projection)
    (w_x,) = _linears(combiner.image_projection)
    w_h, w_o = _linears(combiner.residual)
    w_l1, w_l2 = _linears(combiner.dynamic_scalar)
    z = torch.cat([torch.relu(linear(t, w_t)), torch.relu(linear(x, w_x))], dim=1)
    weight = torch.sigmoid(linear(torch.relu(linear(z, w_l1)), w_l2))
    residual = linear(torch.relu(linear(z, w_h)), w_o)
    text = t if combiner.text_channels == combiner.image_channels else t @ combiner.text_to_image.weight.T
    return residual + weight * text + (1 - weight) * x


def test_combiner_is_registered_and_built_by_name() -> None:
    assert "combiner" in COMPOSERS
    assert isinstance(build_composer("combiner", C, D), Combiner)


def test_defaults_follow_the_authors_code() -> None:
    combiner = Combiner(C, D)
    (w_t,) = _linears(combiner.text_projection)
    w_h, _ = _linears(combiner.residual)
    assert (w_t.in_features, w_t.out_features) == (D, 4 * C)
    assert (w_h.in_features, w_h.out_features) == (8 * C, 8 * C)
    assert all(m.p == 0.5 for m in combiner.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("text_channels", [D, C], ids=["text_projected", "same_width"])
def test_matches_the_published_formula_on_pooled_vectors(text_channels: int) -> None:
    torch.manual_seed(0)
    combiner = Combiner(C, text_channels, projection_channels=5, hidden_channels=7).eval()
    assert isinstance(combiner.text_to_image, nn.Identity) == (text_channels == C)
    x, t = torch.randn(5, C), torch.randn(5, text_channels)
    with torch.no_grad():
        torch.testing.assert_close(
            combiner(x, t), _published_formula(combiner, x, t), rtol=1e-5, atol=1e-5
        )


def test_composes_the_spatial_mean_of_a_map_broadcast_over_its_positions() -> None:
    torch.manual_seed(0)
    combiner = build_composer("combiner", C, D, projection_channels=5, hidden_channels=7).eval()
    image, t = torch.randn(2, C, 3, 4), torch.randn(2, D)
    x = image.sum(dim=(2, 3)) / 12  # the mean over the 3 x 4 positions
    with torch.no_grad():
        out = combiner(image, t)
        expected = _published_formula(combiner, x, t)
    assert out.shape == image.shape
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(out[:, :, i, j], expected, rtol=1e-5, atol=1e-5)


def test_weight_mixes_text_and_image_convexly() -> None:
    # With the residual branch silenced, the output lies on the segment between the image
    # vector and the text vector: out = lambda t + (1 - lambda) x with 0 < lambda < 1.
    torch.manual_seed(0)
    combiner = Combiner(C, C, projection_channels=5, hidden_channels=7).eval()
    with torch.no_grad():
        for p in combiner.residual[-1].parameters():
            p.zero_()
        x, t = torch.randn(4, C), torch.randn(4, C)
        out = combiner(x, t)
    weight = ((out - x) * (t - x)).sum(dim=1) / (t - x).pow(2).sum(dim=1)
    assert bool(((weight > 0) & (weight < 1)).all())
    torch.testing.assert_close(out, x + weight[:, None] * (t - x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, C, 2, 5), (3, C)], ids=["map", "pooled"])
def test_output_keeps_the_input_shape_and_returns_no_attention(shape: tuple[int, ...]) -> None:
    combiner = Combiner(C, D).train()
    out, attention = combiner(torch.randn(shape), torch.randn(3, D), return_attention=True)
    assert out.shape == shape and attention is None


@pytest.mark.parametrize("shape", [(0, C, 2, 5), (0, C)], ids=["map", "pooled"])
def test_an_empty_batch_gives_an_empty_output(shape: tuple[int, ...]) -> None:
    combiner = Combiner(C, D).train()
    image = torch.randn(shape, requires_grad=True)
    out = combiner(image, torch.randn(0, D))
    assert out.shape == shape
    out.sum().backward()
    assert image.grad is not None and image.grad.shape == shape


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    combiner = Combiner(C, D)
    x, t = torch.randn(8, C), torch.randn(8, D)
    with torch.no_grad():
        assert not torch.allclose(combiner.train()(x, t), combiner.train()(x, t))
        torch.testing.assert_close(combiner.eval()(x, t), combiner.eval()(x, t))


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        (torch.randn(2, C + 1, 3, 3), torch.randn(2, D), "image_features.*channels C"),
        (torch.randn(2, C, 3), torch.randn(2, D), "image_features.*2-D tensor .* or a 4-D"),
        (torch.randn(2, C, 0, 3), torch.randn(2, D), "image_features.*non-empty map"),
        (torch.randn(2, C), torch.randn(2, D + 1), "text_features.*text width D"),
        (torch.randn(2, C), torch.randn(3, D), "batch"),
        (torch.randn(2, C).double(), torch.randn(2, D).double(), "image_features.*float32"),
        (torch.randn(2, C), torch.randn(2, D).double(), "text_features.*float32"),
    ],
    ids=["channels", "rank", "empty_map", "text_width", "batch", "weight_dtype", "text_dtype"],
)
def test_bad_inputs_are_rejected_naming_the_argument(
    image: torch.Tensor, text: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Combiner(C, D)(image, text)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"projection_channels": 0}, "projection_channels"),
        ({"hidden_channels": -1}, "hidden_channels"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": True}, "dropout"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Combiner(C, D, **options)  # type: ignore[arg-type]


def test_a_float64_combiner_takes_float64_inputs() -> None:
    combiner = Combiner(C, D).double().eval()
    out = combiner(torch.randn(2, C, 2, 2, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("shape", [(3, C, 2, 5), (3, C)], ids=["map", "pooled"])
def test_every_parameter_gets_a_gradient(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    combiner = Combiner(C, D).double().train()
    image = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    text = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    target = torch.randn(shape, dtype=torch.float64)
    (combiner(image, text) * target).sum().backward()
    for name, p in combiner.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    assert image.grad is not None and image.grad.abs().max() > 0
    assert text.grad is not None and text.grad.abs().max() > 0


def test_gradients_match_finite_differences() -> None:
    torch.manual_seed(0)
    combiner = Combiner(C, D, projection_channels=3, hidden_channels=5).double().eval()
    image = torch.randn(2, C, 2, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: combiner(x, t), (image, text))


def test_trains_in_the_reference_model() -> None:
    torch.manual_seed(0)
    texts = ["make it red", "add a circle", "remove the square"]
    vocab = Vocabulary.from_texts(texts)
    config = VALConfig(
        vocab_size=len(vocab),
        composer="combiner",
        backbone_channels=(8, 12),
        image_size=32,
        word_dim=8,
        text_hidden_dim=16,
        text_dim=8,
        composer_kwargs={"dropout": 0.0},
    )
    model = VAL(config, vocabulary=vocab).train()
    assert sum(isinstance(m, Combiner) for m in model.composer.modules()) == 2  # one per level
    tokens, lengths = vocab.encode(texts)
    loss = model.compute_loss(torch.rand(3, 3, 32, 32), tokens, lengths, torch.rand(3, 3, 32, 32))
    loss.total.backward()
    assert torch.isfinite(loss.total)
    for name, p in model.composer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
