"""Hugging Face Hub conventions: ``VAL.from_pretrained("owner/name")`` and ``VAL.push_to_hub``.

No test touches the network. The repo-id route runs against huggingface_hub's own offline
cache: a child interpreter with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at a
folder laid out as the Hub's cache (``models--owner--name/refs/main`` holding a commit id,
``snapshots/<commit>/`` holding the files ``VAL.save_pretrained`` wrote), which is what the
cache holds after a download. ``push_to_hub`` itself needs the Hub and is not run; the
folder it uploads is written by the same mixin call (``save_pretrained`` of the adapter) and
checked. Without huggingface_hub (a child interpreter where importing it fails), local
folders still save and load, and the Hub routes are one-line ImportErrors naming the extra.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from valfusion.encoders import Vocabulary
from valfusion.models import VAL, VALConfig
from valfusion.models.hub import _hub_model, is_repo_id

ROOT = Path(__file__).resolve().parents[1]
VOCAB = Vocabulary.from_texts(["make it red", "make it blue"])
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Builds the same tiny model in the child interpreters as here.
MODEL = """
import torch
from valfusion.encoders import Vocabulary
from valfusion.models import VAL, VALConfig

torch.manual_seed(0)
vocab = Vocabulary.from_texts(["make it red", "make it blue"])
config = VALConfig(vocab_size=len(vocab), backbone_channels=(4, 8, 8), image_size=32,
                   word_dim=8, text_hidden_dim=8, text_dim=8)
model = VAL(config, vocabulary=vocab).eval()
images = torch.rand(2, 3, 32, 32)
tokens, lengths = vocab.encode(["make it red", "make it blue"])
"""


def tiny_model() -> VAL:
    config = VALConfig(
        vocab_size=len(VOCAB), backbone_channels=(4, 8, 8), image_size=32,
        word_dim=8, text_hidden_dim=8, text_dim=8,
    )
    return VAL(config, vocabulary=VOCAB).eval()


def run_child(code: str, cwd: Path, **env: str) -> list[str]:
    """Run ``MODEL + code`` in a fresh interpreter; its stdout lines."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", MODEL + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=environment,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.slow  # a fresh interpreter: imports torch and torchmetrics again
def test_a_repo_id_loads_from_the_hub_cache_offline(tmp_path):
    cache = tmp_path / "hub-cache"
    lines = run_child(
        f"""
        from pathlib import Path
        repo = Path({str(cache)!r}) / "models--owner--name"
        model.save_pretrained(repo / "snapshots" / {COMMIT!r})
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text({COMMIT!r})

        for loaded in (VAL.from_pretrained("owner/name"),
                       VAL.from_pretrained("owner/name", revision={COMMIT!r})):
            torch.testing.assert_close(
                loaded.compose(images, tokens, lengths), model.compose(images, tokens, lengths)
            )
            print(type(loaded).__name__, loaded.config == config, loaded.training,
                  loaded.vocabulary is not None and loaded.vocabulary.tokens == vocab.tokens)
        try:
            VAL.from_pretrained("owner/not-cached")
        except FileNotFoundError as error:
            print("error:", error)
        """,
        tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
    )
    assert lines[:2] == ["VAL True False True"] * 2
    assert len(lines) == 3 and lines[2].startswith("error: directory: 'owner/not-cached' ")


@pytest.mark.slow  # a fresh interpreter
def test_without_huggingface_hub_local_folders_work_and_repo_ids_name_the_extra(tmp_path):
    lines = run_child(
        """
        import sys
        # Importing valfusion.models imports torchmetrics, which in this environment imports
        # transformers and so huggingface_hub; from here on, importing it fails as if absent.
        for name in [m for m in sys.modules if m.split(".")[0] == "huggingface_hub"]:
            del sys.modules[name]
        sys.modules["huggingface_hub"] = None

        folder = model.save_pretrained("saved")
        print(sorted(p.name for p in folder.iterdir()))
        loaded = VAL.from_pretrained("saved")
        torch.testing.assert_close(
            loaded.compose(images, tokens, lengths), model.compose(images, tokens, lengths)
        )
        print("local ok")
        for call in (lambda: VAL.from_pretrained("owner/name"),
                     lambda: model.push_to_hub("owner/name")):
            try:
                call()
            except ImportError as error:
                print("error:", error)
        """,
        tmp_path,
    )
    assert lines[0] == "['config.json', 'model.safetensors', 'vocabulary.json']"
    assert lines[1] == "local ok"
    assert len(lines) == 4
    assert lines[2].startswith("error: directory: 'owner/name': not a local folder")
    assert lines[3].startswith("error: repo_id: 'owner/name': pushing")
    assert all("pip install 'valfusion[hub]'" in line for line in lines[2:])


def test_push_to_hub_uploads_the_saved_folder_and_a_model_card(tmp_path):
    model = tiny_model()
    local = model.save_pretrained(tmp_path / "local")
    pushed = tmp_path / "pushed"
    # What push_to_hub uploads: the mixin's save_pretrained into a temporary folder.
    _hub_model()(model).save_pretrained(pushed, model_card_kwargs={"repo_id": "owner/name"})

    assert sorted(p.name for p in pushed.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "vocabulary.json"
    ]
    for name in ("config.json", "vocabulary.json"):
        assert (pushed / name).read_bytes() == (local / name).read_bytes()
    card = (pushed / "README.md").read_text()
    assert "library_name: valfusion" in card
    assert 'VAL.from_pretrained("owner/name")' in card
    reloaded = VAL.from_pretrained(pushed)
    assert reloaded.config == model.config
    for name, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0)


def test_save_pretrained_still_writes_exactly_the_three_files(tmp_path):
    folder = tiny_model().save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "vocabulary.json"
    ]
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(VOCAB)


def test_a_local_folder_wins_over_a_repo_id_of_the_same_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model().save_pretrained(Path("owner") / "name")
    assert not is_repo_id("owner/name")
    assert isinstance(VAL.from_pretrained("owner/name"), VAL)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("owner/name", True), ("my-org/val.fashioniq_v1", True), ("name", False),
     ("/abs/owner/name", False), ("./owner/name", False), ("a/b/c", False),
     (Path("owner/name"), False)],
)
def test_only_owner_slash_name_strings_are_repo_ids(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id(name) is expected


@pytest.mark.parametrize(
    ("option", "value"),
    [("revision", "main"), ("cache_dir", "cache"), ("local_files_only", True), ("token", "hf_x")],
)
def test_a_hub_option_with_a_local_folder_is_refused_naming_it(tmp_path, option, value):
    folder = tiny_model().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=rf"^{option}: .*local folder"):
        VAL.from_pretrained(folder, **{option: value})


@pytest.mark.parametrize("repo_id", ["name only", "a/b/c", "", 3])
def test_push_to_hub_refuses_a_malformed_repo_id_before_any_upload(repo_id):
    with pytest.raises(ValueError, match=r"^repo_id: expected a Hub repo id 'owner/name'"):
        tiny_model().push_to_hub(repo_id)


def test_huggingface_hub_is_imported_only_inside_functions():
    # A module-level import would make every `import valfusion.models` pay for (and need) it.
    for path in (ROOT / "valfusion").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_functions = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if id(node) in in_functions:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "huggingface_hub" for n in names), path
