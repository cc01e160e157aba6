"""VAL end to end on a real torchvision ResNet-50 (stages 2-4, the paper's backbone).

Needs the `vision` extra; run in the torch 2.14.1 + torchvision 0.29.1 environment (the
CPU torch 2.13.0 wheel has no matching torchvision on the registry). Nothing is
downloaded: every ResNet is built with weights=None, and "pretrained" weights are a
state dict the test creates. Images are 64 px (maps 8/4/2) except for the official
composer at the paper's 256 px (maps 32/16/8).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from valfusion.encoders import TorchvisionResNetPyramid, Vocabulary
from valfusion.models import VAL, VALConfig

TEXTS = ("make it red", "make it blue")
VOCAB = Vocabulary.from_texts(TEXTS)
RESNET50_CHANNELS = (512, 1024, 2048)
EMBEDDING = sum(RESNET50_CHANNELS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared by several processes: extra intra-op threads only wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resnet50_config(composer: str = "val", image_size: int = 64, **overrides) -> VALConfig:
    options = {
        "vocab_size": len(VOCAB),
        "composer": composer,
        "backbone": "resnet50",
        "image_size": image_size,
        "word_dim": 8,
        "text_hidden_dim": 16,
        "text_dim": 16,
        "text_dropout": 0.0,
    } | overrides
    return VALConfig(**options)


def encoded() -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(VOCAB.encode(list(TEXTS)))


@pytest.fixture(scope="module")
def resnet_and_model() -> tuple[torchvision.models.ResNet, VAL]:
    """A torchvision ResNet-50 standing in for pretrained weights, and an eval-mode VAL
    whose backbone was initialised from it (one build of each for the read-only tests)."""
    resnet = torchvision.models.resnet50(weights=None).eval()
    backbone = TorchvisionResNetPyramid("resnet50", weights=resnet.state_dict())
    return resnet, VAL(resnet50_config(), vocabulary=VOCAB, backbone=backbone).eval()


def test_resnet50_model_composes_queries_of_the_stage_2_to_4_width(resnet_and_model):
    _, model = resnet_and_model
    with torch.no_grad():
        out = model.compose(torch.rand(2, 3, 64, 64), *encoded(), return_levels=True)
    assert out.embedding.shape == (2, EMBEDDING)
    assert [tuple(level.shape) for level in out.levels] == [(2, c) for c in RESNET50_CHANNELS]
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))


def test_image_embedding_is_pooled_torchvision_resnet50_stages_2_to_4(resnet_and_model):
    resnet, model = resnet_and_model
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        stages = []
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
            h = layer(h)
            stages.append(h)
        levels = [F.normalize(s.mean(dim=(2, 3)), dim=1) for s in stages[1:]]
        expected = torch.cat(levels, dim=1) / math.sqrt(3)
        torch.testing.assert_close(model.encode_image(x), expected)


def test_resnet50_model_trains_end_to_end():
    # float64, so that gradients that vanish in exact arithmetic are separated from real
    # ones by many orders of magnitude on any CPU (float32 rounding decides whether they
    # come out as 0 or as ~1e-7 depending on the machine's kernels).
    torch.manual_seed(0)
    model = VAL(resnet50_config(semantic_dim=8), vocabulary=VOCAB).double()
    tokens, lengths = encoded()
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    targets = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    out = model.compute_loss(images, tokens, lengths, targets, tokens, lengths)
    assert out.total.dtype == torch.float64
    out.total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert {n for n, g in grads.items() if g is None} == set()
    largest = max(g.abs().max().item() for g in grads.values())
    # w_sa starts at 0 and multiplies the self-attentional branch: its gradient is an
    # exact product with 0.0, hence exactly zero in floating point too.
    structural = {n for n in grads if ".self_attention." in n}
    assert structural and all(not grads[n].any() for n in structural)
    # Zero in exact arithmetic, not by a product with 0.0: w_ja (while w_sa = 0 the
    # composed map is w_ja times a fixed map, and the embedding is L2-normalised, so it
    # is scale invariant in w_ja) and the text projection's bias (a per-channel constant
    # that the text encoder's own BatchNorm1d, in training mode, removes). Rounding leaves at most
    # n * eps * largest with n (terms in a cancelling sum) far below 1e6 and
    # eps = 2.2e-16, so 1e-9 * largest bounds them.
    vanishing = {n for n in grads if n.endswith(".w_ja")} | {"text_encoder.proj.bias"}
    assert len(vanishing) == 4
    for name in vanishing:
        assert grads[name].abs().max().item() <= 1e-9 * largest, name
    # Every other parameter learns: its gradient is above that rounding bound.
    for name in grads.keys() - structural - vanishing:
        assert grads[name].abs().max().item() > 1e-9 * largest, name
    assert any(n.startswith("backbone.layer4.") for n in grads)


def test_a_float64_model_keeps_float64_embeddings():
    model = VAL(resnet50_config(), vocabulary=VOCAB).double().eval()
    with torch.no_grad():
        out = model.compose(
            torch.rand(1, 3, 64, 64, dtype=torch.float64), *VOCAB.encode(["make it red"]), return_levels=True
        )
    assert out.embedding.dtype == torch.float64
    assert all(level.dtype == torch.float64 for level in out.levels)


def test_val_official_on_resnet50_at_256px_ties_levels_to_32_16_8_maps():
    model = VAL(resnet50_config("val_official", image_size=256), vocabulary=VOCAB).eval()
    assert [level.feature_size for level in model.composer.levels] == [(32, 32), (16, 16), (8, 8)]
    with torch.no_grad():
        out = model.compose(
            torch.rand(1, 3, 256, 256), *VOCAB.encode(["make it red"]), return_attention=True
        )
    assert out.embedding.shape == (1, EMBEDDING)
    assert [tuple(a.spatial_gate.shape) for a in out.attention] == [
        (1, 1, 32, 32),
        (1, 1, 16, 16),
        (1, 1, 8, 8),
    ]


def test_resnet50_model_round_trips_through_save_pretrained(resnet_and_model, tmp_path):
    resnet, model = resnet_and_model
    model.save_pretrained(tmp_path)
    # No backbone passed: from_pretrained rebuilds resnet50 from the config, then loads.
    loaded = VAL.from_pretrained(tmp_path)
    x, (tokens, lengths) = torch.rand(2, 3, 64, 64), encoded()
    with torch.no_grad():
        assert torch.equal(loaded.compose(x, tokens, lengths), model.compose(x, tokens, lengths))
    assert torch.equal(loaded.backbone.conv1.weight, resnet.conv1.weight)
