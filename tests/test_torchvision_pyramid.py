"""TorchvisionResNetPyramid on real torchvision ResNets (needs the `vision` extra).

Tested with torch 2.14.1 + torchvision 0.29.1 (the CPU torch 2.13.0 wheel has no
matching torchvision on the registry). Nothing is downloaded: every model is built
with weights=None and weights come from state dicts the tests create (weights files:
tests/test_encoders_backbone_weights.py).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from valfusion.encoders import TorchvisionResNetPyramid


@pytest.fixture(scope="module")
def resnet50_pyramid() -> TorchvisionResNetPyramid:
    return TorchvisionResNetPyramid("resnet50").eval()


def reference_stage_outputs(model: torchvision.models.ResNet, images: torch.Tensor) -> list:
    """Independent statement of ResNet stages 1-4, written against torchvision's model."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


def test_resnet50_stages_2_to_4_have_the_paper_channels(resnet50_pyramid):
    assert resnet50_pyramid.channels == (512, 1024, 2048)
    assert resnet50_pyramid.reductions == (8, 16, 32)


def test_resnet50_maps_at_256px_are_32_16_8(resnet50_pyramid):
    with torch.no_grad():
        maps = resnet50_pyramid(torch.randn(1, 3, 256, 256))
    assert [tuple(m.shape) for m in maps] == [(1, 512, 32, 32), (1, 1024, 16, 16), (1, 2048, 8, 8)]
    assert resnet50_pyramid.feature_sizes(256) == [(32, 32), (16, 16), (8, 8)]


def test_resnet50_maps_at_a_small_odd_input_match_feature_sizes(resnet50_pyramid):
    with torch.no_grad():
        maps = resnet50_pyramid(torch.randn(2, 3, 45, 70))
    assert [tuple(m.shape[2:]) for m in maps] == resnet50_pyramid.feature_sizes((45, 70))
    assert [m.shape[1] for m in maps] == [512, 1024, 2048]


@pytest.fixture(scope="module")
def resnet18_all_stages() -> TorchvisionResNetPyramid:
    return TorchvisionResNetPyramid("resnet18", stages=(1, 2, 3, 4)).eval()


@settings(max_examples=10)
@given(height=st.integers(1, 96), width=st.integers(1, 96))
def test_resnet18_maps_match_declared_channels_and_sizes(resnet18_all_stages, height, width):
    pyramid = resnet18_all_stages
    with torch.no_grad():
        maps = pyramid(torch.randn(1, 3, height, width))
    assert [m.shape[1] for m in maps] == list(pyramid.channels) == [64, 128, 256, 512]
    assert [tuple(m.shape[2:]) for m in maps] == pyramid.feature_sizes((height, width))


def test_state_dict_file_weights_are_loaded(tmp_path):
    torch.manual_seed(123)
    source = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    pyramid = TorchvisionResNetPyramid("resnet50", weights=path)
    expected = source.state_dict()
    loaded = pyramid.state_dict()
    assert set(loaded) == {k for k in expected if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key


def test_loaded_pyramid_computes_the_torchvision_stage_outputs():
    torch.manual_seed(7)
    source = torchvision.models.resnet50(weights=None).eval()
    pyramid = TorchvisionResNetPyramid("resnet50", weights=source.state_dict()).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = pyramid(images)
        expected = reference_stage_outputs(source, images)[1:]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_state_dict_without_classifier_is_accepted():
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)
    backbone_only = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    pyramid = TorchvisionResNetPyramid("resnet18", weights=backbone_only)
    assert torch.equal(pyramid.conv1.weight, source.conv1.weight)


def test_state_dict_of_another_architecture_raises_value_error():
    other = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"^weights:"):
        TorchvisionResNetPyramid("resnet50", weights=other)


def test_weights_enum_is_refused_in_favour_of_the_imagenet_string():
    with pytest.raises(ValueError, match=r"^weights: expected None, 'imagenet'.*ResNet50_Weights"):
        TorchvisionResNetPyramid("resnet50", weights=torchvision.models.ResNet50_Weights.DEFAULT)


def test_stages_after_the_last_requested_are_dropped():
    pyramid = TorchvisionResNetPyramid("resnet18", stages=(1, 2))
    assert pyramid.channels == (64, 128)
    assert not hasattr(pyramid, "layer3") and not hasattr(pyramid, "layer4")


def test_frozen_stages_get_no_gradient_and_keep_batch_norm_statistics():
    pyramid = TorchvisionResNetPyramid("resnet18", frozen_stages=2).train()
    frozen_bn = pyramid.layer2[0].bn1
    trained_bn = pyramid.layer3[0].bn1
    frozen_mean, trained_mean = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    maps = pyramid(torch.randn(2, 3, 64, 64))
    sum(m.sum() for m in maps).backward()
    for name, parameter in pyramid.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
        assert parameter.requires_grad is not frozen, name
        assert (parameter.grad is None) is frozen, name
    assert torch.equal(frozen_bn.running_mean, frozen_mean)
    assert not torch.equal(trained_bn.running_mean, trained_mean)


def test_bad_images_raise_value_error_naming_images(resnet50_pyramid):
    with pytest.raises(ValueError, match=r"^images:"):
        resnet50_pyramid(torch.randn(1, 1, 64, 64))
