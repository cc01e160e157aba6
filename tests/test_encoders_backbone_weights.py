"""Backbone weights: None | "imagenet" | a local file, for the torchvision and timm pyramids.

Nothing is downloaded. Weights files are real: the plain torchvision/timm model is built
with random weights and its state dict saved with ``torch.save`` or safetensors; the
pyramid that loads it is compared with that model's own stage outputs, written out in
the test. Bad files (wrong shapes, another model's keys, a crafted pickle whose
``__reduce__`` would create a folder) must be refused with one line naming the file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from valfusion.encoders import (
    IMAGENET,
    RESNET_ARCHS,
    TimmPyramid,
    TorchvisionResNetPyramid,
    load_backbone_state_dict,
    resolve_backbone_weights,
)
from valfusion.encoders.torchvision_resnet import _imagenet_weights


def save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a state dict the way a user's checkpoint would be written."""
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def resnet_stage_outputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Stages 1-4 of a ResNet (torchvision's and timm's share the layout), by hand."""
    activation = model.act1 if hasattr(model, "act1") else model.relu  # timm / torchvision
    x = model.maxpool(activation(model.bn1(model.conv1(images))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


def one_line_error(call, path: Path | None = None) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    if path is not None:
        assert str(path) in message
    return message


class MakesAFolder:
    """Unpickling this calls os.mkdir(path): what a malicious weights file holds."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# resolve_backbone_weights: the text form a config field or a flag holds


def test_none_and_imagenet_resolve_to_themselves():
    assert resolve_backbone_weights(None) is None
    assert resolve_backbone_weights("imagenet") == IMAGENET == "imagenet"


def test_an_existing_file_resolves_to_its_path(tmp_path):
    path = save_weights({"w": torch.zeros(1)}, tmp_path / "backbone.pt")
    assert resolve_backbone_weights(str(path)) == path


@pytest.mark.parametrize("spec", ["", "imagenet1k", "missing.pt", 3])
def test_anything_else_is_refused_naming_backbone_weights(tmp_path, spec):
    spec = str(tmp_path / spec) if spec == "missing.pt" else spec
    message = one_line_error(lambda: resolve_backbone_weights(spec))
    assert message.startswith("backbone_weights: expected")
    assert repr(spec) in message


def test_a_directory_is_not_a_weights_file(tmp_path):
    message = one_line_error(
        lambda: resolve_backbone_weights(tmp_path, argument="--backbone-weights")
    )
    assert message.startswith("--backbone-weights:") and "not a file" in message


# "imagenet" goes to torchvision's own weights API (resolved here, not downloaded)


def test_imagenet_resolves_to_torchvisions_default_weights_enum():
    assert _imagenet_weights("resnet50") is torchvision.models.ResNet50_Weights.DEFAULT
    assert _imagenet_weights("resnet18") is torchvision.models.ResNet18_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("arch", RESNET_ARCHS)
def test_imagenet_weights_of_every_arch_have_that_arch_parameter_count(arch):
    # The enum's recorded parameter count is that of the checkpoint it would download.
    enum = _imagenet_weights(arch)
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    assert enum.meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert "IMAGENET1K" in enum.name


# Files of the plain torchvision model


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_torchvision_weights_file_gives_the_models_stage_outputs(tmp_path, suffix):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None).eval()
    path = save_weights(source.state_dict(), tmp_path / f"resnet18{suffix}")
    pyramid = TorchvisionResNetPyramid("resnet18", weights=path, stages=(1, 2, 3, 4)).eval()
    images = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        got = pyramid(images)
        expected = resnet_stage_outputs(source, images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_training_checkpoint_wrapping_the_state_dict_is_unwrapped(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": source.state_dict(), "arch": "resnet18"}, path)
    pyramid = TorchvisionResNetPyramid("resnet18", weights=path)
    assert torch.equal(pyramid.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_wrong_shapes_are_refused_naming_file_and_key(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = save_weights(state, tmp_path / "resnet18.safetensors")
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert message.startswith(f"weights: {path} does not fit torchvision resnet18: 1 shape")
    assert "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message


def test_another_models_keys_are_refused(tmp_path):
    path = save_weights({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "text.pt")
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert "missing keys" in message and "1 unexpected keys ['encoder.weight']" in message


def test_a_partial_match_outside_the_classifier_is_refused(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.running_var"]
    path = save_weights(state, tmp_path / "partial.pt")
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert "1 missing keys ['layer4.1.bn2.running_var']" in message


def test_a_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "missing.pth"
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert message.startswith("weights: expected an existing weights file")


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save([1, 2, 3], path)
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert "does not hold a state dict" in message


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_crafted_pickle_is_refused_before_its_code_runs(tmp_path, how):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "weights.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps(MakesAFolder(marker), protocol=2))
    else:
        torch.save({"conv1.weight": MakesAFolder(marker)}, path)
    message = one_line_error(lambda: TorchvisionResNetPyramid("resnet18", weights=path), path)
    assert "refused to load" in message and "mkdir" in message
    assert not marker.exists()
    message = one_line_error(lambda: TimmPyramid("resnet18", weights=path), path)
    assert "refused to load" in message and not marker.exists()


def test_load_backbone_state_dict_reads_both_formats_alike(tmp_path):
    state = {"a.weight": torch.randn(2, 3), "a.bias": torch.randn(2)}
    from_pt = load_backbone_state_dict(save_weights(state, tmp_path / "w.pt"))
    from_st = load_backbone_state_dict(save_weights(state, tmp_path / "w.safetensors"))
    for loaded in (from_pt, from_st):
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


# Files of the plain timm model, loaded into the features_only TimmPyramid


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_file_gives_the_models_stage_outputs(tmp_path, suffix):
    torch.manual_seed(2)
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = save_weights(source.state_dict(), tmp_path / f"resnet18{suffix}")
    pyramid = TimmPyramid("resnet18", out_indices=(1, 2, 3, 4), weights=path).eval()
    images = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        got = pyramid(images)
        expected = resnet_stage_outputs(source, images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_timm_model_keeps_no_second_copy_of_the_loaded_weights():
    # The weights travel to timm inside its pretrained config, which stays on the model.
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    pyramid = TimmPyramid("resnet18", weights=state)
    assert "state_dict" not in pyramid.model.pretrained_cfg
    assert "state_dict" not in pyramid.model.default_cfg


def test_timm_file_without_classifier_is_accepted(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    pyramid = TimmPyramid("resnet18", weights=save_weights(state, tmp_path / "trunk.pt"))
    assert torch.equal(
        pyramid.model.state_dict()["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"]
    )


def test_timm_file_of_another_architecture_is_refused(tmp_path):
    other = timm.create_model("resnet34", pretrained=False).state_dict()
    path = save_weights(other, tmp_path / "resnet34.safetensors")
    message = one_line_error(lambda: TimmPyramid("resnet18", weights=path), path)
    assert message.startswith(f"weights: {path} does not fit timm resnet18:")
    assert "96 unexpected keys" in message  # resnet34 has 3-6 blocks per stage, resnet18 2


@pytest.mark.parametrize("name", ["resnet50t", "resnet18.no_such_tag"])
def test_imagenet_for_a_timm_name_without_published_weights_is_refused_offline(name):
    # timm's registry knows which names have pretrained weights: refused before any download.
    assert timm.is_model(name) and not timm.is_model_pretrained(name)
    message = one_line_error(lambda: TimmPyramid(name, weights="imagenet"))
    assert message.startswith(f"weights: timm publishes no pretrained weights for {name!r}")


def test_pretrained_true_is_refused_in_favour_of_weights_imagenet():
    message = one_line_error(lambda: TimmPyramid("resnet18", pretrained=True))
    assert message.startswith("pretrained:") and "weights='imagenet'" in message
