"""``valfusion train --config FILE``, the run's resolved configuration, and train's options
written once: choices from the registries, defaults from the configuration dataclasses."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from test_cli import TINY, run, write_folder

from valfusion.cli import RESOLVED_CONFIG_FILE, build_parser, main
from valfusion.engine import AMP_MODES, IDENTITY_FILE, TRAIN_CONFIG_FILE, TrainConfig
from valfusion.layers import COMPOSERS
from valfusion.losses.hierarchical_matching import FORMS
from valfusion.models import BACKBONES, VALConfig

# TINY as a config file: every key spelled as its flag, with `-`, or with `_`.
TINY_FILE = {
    "steps": 3, "batch_size": 4, "image-size": 32, "channels": [4, 8, 8], "word_dim": 8,
    "text-hidden-dim": 8, "text_dim": 8, "no_progress": True, "device": "cpu",
}


def _toml(values: dict) -> str:
    """A TOML file of ``values`` (scalars, lists of numbers, one level of tables)."""

    def scalar(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return json.dumps(value)  # strings, numbers and lists of numbers are the same in TOML

    flat = [f"{key} = {scalar(v)}" for key, v in values.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{key}]\n" + "\n".join(f"{k} = {scalar(x)}" for k, x in v.items())
        for key, v in values.items() if isinstance(v, dict)
    ]
    return "\n".join(flat) + "\n" + "\n".join(tables) + "\n"


def _write_config(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values) if path.suffix == ".json" else _toml(values))
    return path


def _saved(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


def _train_subparser():
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices["train"].populated()


# ---------------------------------------------------------------------------- --config


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_sets_the_options_and_the_command_line_wins(capsys, tmp_path, suffix):
    folder = write_folder(tmp_path / "data")
    config = _write_config(
        tmp_path / f"run{suffix}",
        {**TINY_FILE, "data": str(folder), "lr": 0.002, "composer": "tirg", "seed": 7,
         "data_option": {"check_images": True}},
    )
    run_dir = tmp_path / "run"
    # --lr before --config and --composer after it: both win over the file.
    code, _, err = run(
        ["train", "--lr", "0.003", "--config", str(config), "--out", str(run_dir), "--composer", "concat"], capsys
    )
    assert code == 0, err
    saved = _saved(run_dir, TRAIN_CONFIG_FILE)
    assert (saved["steps"], saved["batch_size"], saved["seed"], saved["lr"]) == (3, 4, 7, 0.003)
    assert saved["model"]["composer"] == "concat"
    assert saved["model"]["backbone_channels"] == [4, 8, 8] and saved["model"]["image_size"] == 32
    identity = _saved(run_dir, IDENTITY_FILE)
    assert identity["source"] == f"folder:{folder.resolve()}"
    assert identity["data_options"] == {"check_images": True}


def test_resolved_config_trains_the_same_run_again(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = run(["train", "--data", str(folder), "--out", str(first), *TINY, "--composer", "tirg"], capsys)
    assert code == 0, err
    resolved = _saved(first, RESOLVED_CONFIG_FILE)
    assert resolved["data"] == f"folder:{folder.resolve()}" and resolved["composer"] == "tirg"
    assert resolved["steps"] == 3 and resolved["channels"] == [4, 8, 8]
    assert resolved["threads"] == torch.get_num_threads()
    # Defaults are written out too: the file does not depend on this version's defaults.
    assert resolved["lr"] == TrainConfig().lr and resolved["loss"] == "softmax"

    code, _, err = run(["train", "--config", str(first / RESOLVED_CONFIG_FILE), "--out", str(second)], capsys)
    assert code == 0, err
    for name in (TRAIN_CONFIG_FILE, IDENTITY_FILE, "config.json", RESOLVED_CONFIG_FILE):
        assert _saved(second, name) == _saved(first, name), name
    from safetensors.torch import load_file

    expected = load_file(first / "model.safetensors")
    got = load_file(second / "model.safetensors")
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []


def test_resume_with_the_resolved_config_is_accepted(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    (run_dir / "metrics.json").unlink()
    code, _, err = run(
        ["train", "--config", str(run_dir / RESOLVED_CONFIG_FILE), "--out", str(run_dir), "--resume"], capsys
    )
    assert code == 0, err
    assert (run_dir / "metrics.json").is_file()


def test_resume_with_a_config_that_changes_the_run_is_refused(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    changed = {**_saved(run_dir, RESOLVED_CONFIG_FILE), "lr": 0.5, "checkpoint_every": 1}
    config = _write_config(tmp_path / "changed.json", changed)
    code, _, err = run(["train", "--config", str(config), "--out", str(run_dir), "--resume"], capsys)
    # lr changes the weights: refused; checkpoint_every does not: not named.
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--lr: saved 0.001, given 0.5" in err and "--checkpoint-every" not in err
    assert sorted((run_dir / "checkpoints").iterdir()) == checkpoints


def _config_error(tmp_path: Path, capsys, name: str, content: str | None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('stepz = 3\n', "unknown key 'stepz' (did you mean 'steps'?)"),
        ('steps = "three"\n', "steps: expected a positive integer, got 'three'"),
        ('steps = -3\n', "steps: expected a positive integer, got -3"),
        ('steps = 2.5\n', "steps: expected a positive integer, got 2.5"),
        ('lr = true\n', "lr: expected a positive number, got True"),
        ('channels = "4,8"\n', "channels: expected a list of positive integers like [32, 64, 128], got '4,8'"),
        ('composer = "transformer9000"\n', "composer: expected one of val, val_official, tirg"),
        ('no-progress = "yes"\n', "no-progress: expected true or false, got 'yes'"),
        ('data_option = 3\n', "data_option: expected a table of loader options"),
        ('batch_size = 4\nbatch-size = 8\n', "'batch_size' and 'batch-size' set the same option"),
        ('out = "elsewhere"\n', "unknown key 'out'"),
        ('steps = \n', "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_the_key_and_the_value(capsys, tmp_path, content, expected):
    err = _config_error(tmp_path, capsys, "run.toml", content)
    assert expected in err


def test_a_malformed_json_config_names_the_line(capsys, tmp_path):
    err = _config_error(tmp_path, capsys, "run.json", '{\n  "steps": 3,\n  "lr" 0.1\n}\n')
    assert "not valid JSON" in err and "line 3" in err


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("run.yaml", "steps: 3\n", "expected a .toml or .json file"),
        ("missing.toml", None, "cannot read the file"),
        ("run.json", "[1, 2]\n", "expected a table of options, got list"),
    ],
)
def test_an_unusable_config_file_is_one_line(capsys, tmp_path, name, content, expected):
    assert expected in _config_error(tmp_path, capsys, name, content)


def test_train_without_a_data_source_is_one_line(capsys, tmp_path):
    code, _, err = run(["train", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--data" in err and "--config" in err


# ---------------------------------------------------------------------------- choices and defaults


# The flags not named after their fields.
_FIELD_OF_FLAG = {"channels": "backbone_channels", "text_encoder_options": "text_encoder_kwargs"}


def _default(field: dataclasses.Field) -> object:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _field_defaults() -> dict[str, object]:
    defaults = {f.name: _default(f) for f in dataclasses.fields(VALConfig)}
    defaults.update({f.name: _default(f) for f in dataclasses.fields(TrainConfig)})
    return defaults


# What the help calls an unset default where "off" would not say it.
_UNSET_SHOWN = {"backbone_weights": "random", "text_encoder_options": "none"}


def test_every_train_setting_documents_its_dataclass_default():
    defaults = _field_defaults()
    checked = []
    for group in _train_subparser()._action_groups:
        if not group.title.startswith(("training", "model")):
            continue
        for action in group._group_actions:
            field = _FIELD_OF_FLAG.get(action.dest, action.dest)
            if field not in defaults:  # --threads, --no-progress: not configuration fields
                continue
            shown = re.search(r"\(default: ([^)]*)\)$", " ".join(action.help.split()))
            assert shown, f"--{action.dest}: its help states no default"
            text, default = shown[1], defaults[field]
            if default is None or default == {}:
                assert text == _UNSET_SHOWN.get(action.dest, "off"), action.dest
            elif action.type is None:
                assert text == default, action.dest
            else:
                assert action.type(text) == default, action.dest
            checked.append(action.dest)
    assert len(checked) == 27


def test_train_choices_are_the_registries():
    choices = {a.dest: a.choices for a in _train_subparser()._actions if a.choices is not None}
    assert tuple(choices["composer"]) == COMPOSERS
    assert tuple(choices["amp"]) == AMP_MODES
    assert tuple(choices["loss"]) == FORMS
    assert "backbone" not in choices  # it also takes timm:NAME and timm_vit:NAME


@pytest.mark.parametrize("backbone", [*(b for b in BACKBONES if b != "custom"), "timm:resnet18", "timm_vit:vit_tiny_patch16_224"])
def test_backbone_takes_every_name_val_builds_from_its_configuration(backbone):
    args = build_parser().parse_args(["train", "--data", "synthetic", "--out", "run", "--backbone", backbone])
    assert args.backbone == backbone


@pytest.mark.parametrize("backbone", ["custom", "resnet", "timm:", "timm_vit: "])
def test_backbone_refuses_other_names_in_one_line(backbone, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--data", "synthetic", "--out", "run", "--backbone", backbone])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--backbone" in err and repr(backbone) in err


# ---------------------------------------------------------------------------- number options


@pytest.mark.parametrize(
    ("flag", "text", "value"),
    [("--steps", "7", 7), ("--seed", "-5", -5), ("--grad-clip", "0", 0.0), ("--lr", "1e-3", 1e-3),
     ("--warmup-steps", "0", 0), ("--weight-decay", "0.5", 0.5)],
)
def test_number_options_take_their_range(flag, text, value):
    args = build_parser().parse_args(["train", "--data", "synthetic", "--out", "run", flag, text])
    parsed = getattr(args, flag[2:].replace("-", "_"))
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("flag", "text", "expected"),
    [("--steps", "0", "a positive integer"), ("--steps", "2.5", "a positive integer"),
     ("--lr", "0", "a positive number"), ("--lr", "nan", "a positive number"), ("--lr", "inf", "a positive number"),
     ("--weight-decay", "-1", "a non-negative number"), ("--warmup-steps", "-1", "a non-negative integer"),
     ("--seed", "x", "an integer"), ("--temperature", "0", "a positive number")],
)
def test_number_options_outside_their_range_are_one_line(capsys, flag, text, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "synthetic", "--out", "run", flag, text])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"argument {flag}: expected {expected}, got {text!r}" in err
