"""Loading weights and checkpoints: every bad file is one clear ValueError naming it, no code runs.

Weights are model.safetensors (what save_pretrained writes when safetensors is installed)
or model.pt (folders written before, or without safetensors); both formats are tested.

The files are real: a model saved with ``VAL.save_pretrained`` and then cut short,
emptied, overwritten, saved from another configuration, or replaced by a crafted pickle
whose ``__reduce__`` creates a folder (proof that the payload ran) when unpickled.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from valfusion.encoders import Vocabulary
from valfusion.engine import load_checkpoint, save_checkpoint
from valfusion.models import VAL, VALConfig

VOCAB = Vocabulary.from_texts(["make it red", "make it blue"])


def tiny_config(**overrides) -> VALConfig:
    options = {
        "vocab_size": len(VOCAB), "backbone_channels": (4, 8, 8), "image_size": 32,
        "word_dim": 8, "text_hidden_dim": 8, "text_dim": 8,
    } | overrides
    return VALConfig(**options)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A folder in the old format: model.pt, as VAL.save_pretrained writes without safetensors.

    It is what VAL.save_pretrained wrote, with model.safetensors converted to model.pt by
    torch.save (the format of run folders written before safetensors).
    """
    folder = VAL(tiny_config(), vocabulary=VOCAB).save_pretrained(tmp_path / "model")
    torch.save(load_file(folder / "model.safetensors"), folder / "model.pt")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture
def saved_st(tmp_path: Path) -> Path:
    """A folder written by VAL.save_pretrained with safetensors installed: model.safetensors."""
    return VAL(tiny_config(), vocabulary=VOCAB).save_pretrained(tmp_path / "model")


class MakesAFolder:
    """Unpickling this calls os.mkdir(path): the kind of object a malicious model.pt holds."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def crafted_files(marker: Path) -> dict[str, bytes]:
    """The payload as a bare pickle and wrapped in torch.save's zip format (as a model.pt)."""
    wrapped = io.BytesIO()
    torch.save({"backbone.stem.0.0.weight": MakesAFolder(marker)}, wrapped)
    return {
        "pickle": pickle.dumps(MakesAFolder(marker), protocol=2),
        "pickle-protocol-5": pickle.dumps(MakesAFolder(marker), protocol=5),
        "torch.save": wrapped.getvalue(),
    }


def one_line_error(call, path: Path) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_the_crafted_payload_runs_when_unpickled_without_protection(tmp_path):
    # Sanity check of the fixture: the file really executes code with a plain unpickler.
    marker = tmp_path / "ran"
    pickle.loads(crafted_files(marker)["pickle"])
    assert marker.is_dir()


@pytest.mark.parametrize("kind", ["pickle", "pickle-protocol-5", "torch.save"])
def test_a_weights_file_that_would_run_code_is_refused_and_does_not_run(saved, tmp_path, kind):
    marker = tmp_path / "ran"
    (saved / "model.pt").write_bytes(crafted_files(marker)[kind])
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "refused" in message and "not a plain tensor file" in message
    assert "weights_only" not in message
    assert not marker.exists()


def test_the_refusal_names_the_function_the_file_asks_for(saved, tmp_path):
    (saved / "model.pt").write_bytes(crafted_files(tmp_path / "ran")["torch.save"])
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert re.search(r"(posix|nt|os)\.mkdir", message)


def test_a_truncated_weights_file_is_one_line_naming_it(saved):
    data = (saved / "model.pt").read_bytes()
    (saved / "model.pt").write_bytes(data[: len(data) // 2])
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "truncated or corrupted" in message


def test_an_empty_weights_file_is_one_line_naming_it(saved):
    (saved / "model.pt").write_bytes(b"")
    assert "empty" in one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")


def test_a_text_file_in_place_of_the_weights_is_one_line_naming_it(saved):
    (saved / "model.pt").write_text("these are not weights\n")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "not a PyTorch tensor file" in message


def test_weights_of_another_configuration_are_one_line_naming_the_shapes(saved, tmp_path):
    other = VAL(tiny_config(backbone_channels=(4, 8, 16)), vocabulary=VOCAB)
    torch.save(other.state_dict(), saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "config.json" in message and "(16," in message and "(8," in message


def test_weights_with_a_missing_entry_are_one_line_naming_it(saved):
    state = torch.load(saved / "model.pt", weights_only=True)
    del state["text_encoder.embedding.weight"]
    torch.save(state, saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "missing" in message and "text_encoder.embedding.weight" in message


def test_weights_with_an_unexpected_entry_are_one_line_naming_it(saved):
    state = torch.load(saved / "model.pt", weights_only=True)
    state["head.weight"] = torch.zeros(2)
    torch.save(state, saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "unexpected" in message and "head.weight" in message


def test_weights_that_are_not_a_state_dict_are_one_line(saved):
    torch.save([torch.zeros(2)], saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "list" in message


def test_integer_weights_in_place_of_float_ones_are_refused(saved):
    # load_state_dict would silently cast them: the model would run on truncated values.
    state = torch.load(saved / "model.pt", weights_only=True)
    state["text_encoder.embedding.weight"] = state["text_encoder.embedding.weight"].long()
    torch.save(state, saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "text_encoder.embedding.weight" in message and "int64" in message


def test_weights_holding_nan_are_refused(saved):
    state = torch.load(saved / "model.pt", weights_only=True)
    state["text_encoder.embedding.weight"][3, 1] = float("nan")
    torch.save(state, saved / "model.pt")
    message = one_line_error(lambda: VAL.from_pretrained(saved), saved / "model.pt")
    assert "NaN" in message and "text_encoder.embedding.weight" in message


def test_half_precision_weights_still_load(saved):
    # A float kind change is a precision choice, not a mismatch.
    model = VAL.from_pretrained(saved)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               saved / "model.pt")
    loaded = VAL.from_pretrained(saved)
    weight = model.text_encoder.embedding.weight
    # float32 -> float16 -> float32 keeps 11 significant bits: relative error <= 2**-11.
    torch.testing.assert_close(loaded.text_encoder.embedding.weight, weight, rtol=2**-11, atol=6e-8)


# ---------------------------------------------------------------------- safetensors


def same_weights(a: VAL, b: VAL) -> bool:
    other = b.state_dict()
    return all(torch.equal(value, other[name]) for name, value in a.state_dict().items())


def test_save_pretrained_writes_model_safetensors_and_no_model_pt(saved_st):
    assert (saved_st / "model.safetensors").is_file() and not (saved_st / "model.pt").exists()


def test_model_safetensors_holds_the_state_dict_for_the_safetensors_reader(tmp_path):
    model = VAL(tiny_config(), vocabulary=VOCAB)
    folder = model.save_pretrained(tmp_path / "model")
    with safe_open(folder / "model.safetensors", framework="pt") as file:
        assert file.metadata() == {"format": "pt"}
        state = {name: file.get_tensor(name) for name in file.keys()}
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in expected)


def test_a_model_safetensors_folder_loads_back_the_same_weights(tmp_path):
    model = VAL(tiny_config(), vocabulary=VOCAB)
    assert same_weights(VAL.from_pretrained(model.save_pretrained(tmp_path / "model")), model)


def test_an_old_model_pt_folder_still_loads(saved):
    expected = torch.load(saved / "model.pt", weights_only=True)
    loaded = VAL.from_pretrained(saved).state_dict()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_model_safetensors_is_preferred_over_model_pt(saved_st):
    other = VAL(tiny_config(), vocabulary=VOCAB)  # other random weights
    torch.save(other.state_dict(), saved_st / "model.pt")
    expected = load_file(saved_st / "model.safetensors")
    loaded = VAL.from_pretrained(saved_st).state_dict()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_saving_into_an_old_folder_removes_its_model_pt(saved):
    VAL(tiny_config(), vocabulary=VOCAB).save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors", "vocabulary.json"]


def test_without_safetensors_the_weights_are_model_pt_and_load(saved_st, monkeypatch):
    # An import of a module set to None in sys.modules raises ImportError: not installed.
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model = VAL(tiny_config(), vocabulary=VOCAB)
    model.save_pretrained(saved_st)  # the stale model.safetensors would be preferred: removed
    assert not (saved_st / "model.safetensors").exists()
    assert same_weights(VAL.from_pretrained(saved_st), model)


def test_a_model_safetensors_without_the_package_is_one_line_naming_it(saved_st, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), saved_st / "model.safetensors")
    assert "pip install safetensors" in message


def test_tied_weights_are_saved_and_load_back_tied_values(tmp_path):
    model = VAL(tiny_config(), vocabulary=VOCAB)
    first, second = model.composer.levels[1], model.composer.levels[2]
    shapes = {n: p.shape for n, p in second.named_parameters()}
    name = next(n for n, p in first.named_parameters() if shapes.get(n) == p.shape and p.dim() > 1)
    owner, attribute = name.rsplit(".", 1)
    setattr(second.get_submodule(owner), attribute, first.get_parameter(name))  # tie them
    assert second.get_parameter(name) is first.get_parameter(name)
    loaded = VAL.from_pretrained(model.save_pretrained(tmp_path / "model"))
    torch.testing.assert_close(loaded.composer.levels[2].get_parameter(name),
                               first.get_parameter(name), rtol=0, atol=0)


def test_a_truncated_model_safetensors_is_one_line_naming_it(saved_st):
    weights = saved_st / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "truncated or corrupted" in one_line_error(lambda: VAL.from_pretrained(saved_st), weights)


def test_a_model_safetensors_cut_inside_its_header_is_one_line_naming_it(saved_st):
    weights = saved_st / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    assert "truncated or corrupted" in one_line_error(lambda: VAL.from_pretrained(saved_st), weights)


def test_an_empty_model_safetensors_is_one_line_naming_it(saved_st):
    weights = saved_st / "model.safetensors"
    weights.write_bytes(b"")
    assert "empty" in one_line_error(lambda: VAL.from_pretrained(saved_st), weights)


def test_a_text_file_in_place_of_model_safetensors_is_one_line_naming_it(saved_st):
    weights = saved_st / "model.safetensors"
    weights.write_text("these are not weights\n")
    assert "not a safetensors file" in one_line_error(lambda: VAL.from_pretrained(saved_st), weights)


def test_a_model_pt_named_model_safetensors_is_one_line_naming_it(saved_st):
    weights = saved_st / "model.safetensors"
    torch.save(load_file(weights), weights)
    assert "not a safetensors file" in one_line_error(lambda: VAL.from_pretrained(saved_st), weights)


def spoil(folder: Path, change) -> Path:
    weights = folder / "model.safetensors"
    state = load_file(weights)
    change(state)
    save_file(state, weights)
    return weights


def test_model_safetensors_of_another_configuration_names_the_shapes(saved_st):
    weights = saved_st / "model.safetensors"
    save_file(VAL(tiny_config(backbone_channels=(4, 8, 16)), vocabulary=VOCAB).state_dict(), weights)
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), weights)
    assert "config.json" in message and "(16," in message and "(8," in message


def test_model_safetensors_with_a_missing_entry_names_it(saved_st):
    weights = spoil(saved_st, lambda state: state.pop("text_encoder.embedding.weight"))
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), weights)
    assert "missing" in message and "text_encoder.embedding.weight" in message


def test_model_safetensors_with_an_unexpected_entry_names_it(saved_st):
    weights = spoil(saved_st, lambda state: state.update({"head.weight": torch.zeros(2)}))
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), weights)
    assert "unexpected" in message and "head.weight" in message


def test_integer_weights_in_model_safetensors_are_refused(saved_st):
    name = "text_encoder.embedding.weight"
    weights = spoil(saved_st, lambda state: state.update({name: state[name].long()}))
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), weights)
    assert name in message and "int64" in message


def test_model_safetensors_holding_nan_is_refused(saved_st):
    name = "text_encoder.embedding.weight"
    weights = spoil(saved_st, lambda state: state[name].__setitem__((3, 1), float("nan")))
    message = one_line_error(lambda: VAL.from_pretrained(saved_st), weights)
    assert "NaN" in message and name in message


# ---------------------------------------------------------------------- checkpoints


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = VAL(tiny_config(), vocabulary=VOCAB)
    return save_checkpoint(tmp_path / "step_0000003.pt", {"model": model.state_dict(), "step": 3})


def test_a_valid_checkpoint_loads(checkpoint):
    assert load_checkpoint(checkpoint)["step"] == 3


def test_a_checkpoint_that_would_run_code_is_refused_and_does_not_run(checkpoint, tmp_path):
    marker = tmp_path / "ran"
    checkpoint.write_bytes(crafted_files(marker)["torch.save"])
    message = one_line_error(lambda: load_checkpoint(checkpoint), checkpoint)
    assert "refused" in message and "not a plain tensor file" in message
    assert "weights_only" not in message
    assert not marker.exists()


def test_a_truncated_checkpoint_is_one_line_naming_it(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    assert "truncated or corrupted" in one_line_error(lambda: load_checkpoint(checkpoint), checkpoint)


def test_an_empty_checkpoint_is_one_line_naming_it(checkpoint):
    checkpoint.write_bytes(b"")
    assert "empty" in one_line_error(lambda: load_checkpoint(checkpoint), checkpoint)


def test_a_tensor_file_that_is_not_a_checkpoint_is_one_line_naming_it(checkpoint):
    torch.save({"step": 3}, checkpoint)
    assert "not a valfusion.checkpoint" in one_line_error(lambda: load_checkpoint(checkpoint), checkpoint)
