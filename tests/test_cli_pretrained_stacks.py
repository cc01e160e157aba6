"""``valfusion train/evaluate/search`` with today's stacks: a timm ViT backbone, a Hugging Face
or open_clip text encoder, and backbone weights from a local file.

Every model is tiny and built from a config (random weights), every weights file is written
here: nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import transformers
from safetensors.torch import load_file
from test_cli import run, write_folder

from valfusion.cli import main
from valfusion.engine import TrainConfig, build_model
from valfusion.models import VAL

# timm, torchvision, transformers and open_clip are in the test command's extras (dev,
# vision, timm): a missing one is an error here, not a skipped test.

BASE = [
    "--steps", "4", "--checkpoint-every", "2", "--batch-size", "4", "--image-size", "32",
    "--text-dim", "8", "--no-progress", "--device", "cpu",
]
SMALL = ["--channels", "4,8,8"]
LSTM = ["--word-dim", "8", "--text-hidden-dim", "8"]
CLIP_NAME = "valfusion-tiny-clip-cli"
CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# The words of write_folder's texts, for the tiny BERT's word-level tokenizer.
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "make", "it", "move", "to", "the", "left", "right",
         "red", "green", "blue", "yellow", "or"]


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT of width 32 (random weights) and a word-level tokenizer, saved as
    ``transformers`` saves any model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_resnet18_weights(path: Path) -> Path:
    import torchvision

    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "bert": write_tiny_bert(root / "bert"),
        "resnet18": write_resnet18_weights(root / "resnet18.pt"),
    }


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_registered(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_config") / f"{CLIP_NAME}.json"
    path.write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(path)


STACKS = {
    "vit": ["--backbone", "timm_vit:vit_tiny_patch16_224", *LSTM],
    "hf": [*SMALL, "--text-encoder", "hf:{bert}", "--text-encoder-options", '{"pooling": "mean"}'],
    "weights": ["--backbone", "resnet18", "--backbone-weights", "{resnet18}", *LSTM],
    "open_clip": [*SMALL, "--text-encoder", f"open_clip:{CLIP_NAME}"],
}


def _options(stack: str, sources: dict[str, Path]) -> list[str]:
    given = [o.replace("{bert}", str(sources["bert"])).replace("{resnet18}", str(sources["resnet18"])) for o in STACKS[stack]]
    return [*BASE, *given]


@pytest.fixture(scope="module", params=list(STACKS))
def trained(request, folder, sources, tmp_path_factory) -> tuple[str, Path]:
    """A finished run of each stack (4 steps, checkpoints at 2 and 4)."""
    stack = request.param
    run_dir = tmp_path_factory.mktemp(f"run_{stack}") / "run"
    code = main(["train", "--data", str(folder), "--out", str(run_dir), *_options(stack, sources)])
    assert code == 0
    return stack, run_dir


def _embeddings(model: VAL, folder: Path) -> torch.Tensor:
    from valfusion.data.images import load_image

    images = torch.stack([load_image(folder / "img/red_left.png", 32), load_image(folder / "img/blue_right.png", 32)])
    tokens, lengths = model.tokenize(["make it blue", "move it to the left"])
    with torch.no_grad():
        return model.compose(images, tokens, lengths)


def test_saved_run_reloads_with_the_trained_weights(trained, folder):
    _, run_dir = trained
    model = VAL.from_pretrained(run_dir)
    final = torch.load(run_dir / "checkpoints" / "step_0000004.pt", weights_only=True)["model"]
    state = model.state_dict()
    assert sorted(state) == sorted(final)
    # Copies of the same tensors (written and read back, nothing computed): equal exactly.
    assert [name for name in final if not torch.equal(final[name], state[name])] == []
    again = _embeddings(VAL.from_pretrained(run_dir), folder)
    # Two loads of the same files run the same float32 ops in eval mode.
    torch.testing.assert_close(_embeddings(model, folder), again, rtol=0, atol=1e-6)


def test_run_folder_holds_what_rebuilds_its_text_encoder(trained):
    stack, run_dir = trained
    config = json.loads((run_dir / "config.json").read_text())
    if stack in ("hf", "open_clip"):
        assert config["text_encoder"].startswith(f"{stack}:")
        assert (run_dir / "text_encoder").is_dir() and not (run_dir / "vocabulary.json").exists()
    else:
        assert config["text_encoder"] == "lstm"
        assert (run_dir / "vocabulary.json").is_file() and not (run_dir / "text_encoder").exists()


def test_hf_run_loads_without_the_original_model_folder(folder, tmp_path, capsys):
    bert = write_tiny_bert(tmp_path / "bert")
    run_dir = tmp_path / "run"
    options = [*BASE, *SMALL, "--text-encoder", f"hf:{bert}"]
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *options], capsys)[0] == 0
    expected = load_file(run_dir / "model.safetensors")
    shutil.rmtree(bert)  # the run folder alone rebuilds the tokenizer and the architecture
    model = VAL.from_pretrained(run_dir)
    assert [n for n, v in model.state_dict().items() if not torch.equal(v, expected[n])] == []
    tokens, lengths = model.tokenize(["make it blue"])
    assert tokens[0, : int(lengths[0])].tolist() == [2, WORDS.index("make"), WORDS.index("it"), WORDS.index("blue"), 3]


def test_evaluate_reproduces_the_recall_of_training(trained, folder, capsys):
    _, run_dir = trained
    code, _, err = run(["evaluate", str(run_dir), "--data", str(folder)], capsys)
    assert code == 0, err
    (written,) = (run_dir / "evaluations").iterdir()
    saved = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads(written.read_text())
    # Recall counts ranks: the same weights give the same ranks.
    assert saved["splits"]["test"] == again["splits"]["test"]


def test_search_ranks_the_gallery(trained, folder, tmp_path, capsys):
    _, run_dir = trained
    code, out, err = run(
        ["search", str(run_dir), "--image", str(folder / "img/red_left.png"), "--text", "make it blue",
         "--gallery", str(folder), "-k", "3", "--picture", str(tmp_path / "found.png")],
        capsys,
    )
    assert code == 0, err
    ranked = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in ranked] == [1, 2, 3]
    scores = [float(r[1]) for r in ranked]
    assert scores == sorted(scores, reverse=True)


def test_interrupted_run_resumes_to_the_same_model(trained, folder, tmp_path, capsys):
    _, run_dir = trained
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    for name in ("checkpoints/step_0000004.pt", "model.safetensors", "metrics.json"):
        (cut / name).unlink()
    code, _, err = run(["train", "--data", str(folder), "--out", str(cut), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    expected, got = load_file(run_dir / "model.safetensors"), load_file(cut / "model.safetensors")
    # Resuming replays the same float ops on the same thread count.
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []


def test_resume_with_another_text_encoder_is_refused(trained, folder, capsys):
    stack, run_dir = trained
    other = "lstm" if stack in ("hf", "open_clip") else f"open_clip:{CLIP_NAME}"
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    code, _, err = run(
        ["train", "--data", str(folder), "--out", str(run_dir), "--resume", "--text-encoder", other], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "--text-encoder: saved" in err
    assert sorted((run_dir / "checkpoints").iterdir()) == checkpoints


# ---------------------------------------------------------------------------- backbone weights


def test_backbone_weights_file_initialises_the_backbone(folder, sources):
    from valfusion.data import load_source

    data = load_source(str(folder), splits=("train",), image_size=32)
    config = TrainConfig(model={"backbone": "resnet18", "backbone_weights": str(sources["resnet18"]),
                                "word_dim": 8, "text_hidden_dim": 8, "text_dim": 8})
    model = build_model(data, config)
    saved = torch.load(sources["resnet18"], weights_only=True)
    kept = model.backbone.state_dict()
    # Every torchvision weight but the classifier is the file's (copied, not computed).
    assert sorted(kept) == sorted(n for n in saved if not n.startswith("fc."))
    assert [n for n in kept if not torch.equal(saved[n], kept[n])] == []


def test_missing_backbone_weights_file_is_one_line_before_the_data_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path / "no_such_data"), "--out", str(tmp_path / "run"),
              "--backbone", "resnet18", "--backbone-weights", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "argument --backbone-weights" in err and "missing.pt', which is not a file" in err
    assert "no_such_data" not in err


class _Payload:
    """Unpickling this would create ``marker``: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_as_backbone_weights_is_refused_without_running_it(folder, tmp_path, capsys):
    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}))
    code, _, err = run(
        ["train", "--data", str(folder), "--out", str(tmp_path / "run"), *BASE, *LSTM,
         "--backbone", "resnet18", "--backbone-weights", str(weights)],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "weights.pt" in err
    assert not marker.exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_backbone_weights_for_the_small_backbone_is_refused(folder, sources, tmp_path, capsys):
    code, _, err = run(
        ["train", "--data", str(folder), "--out", str(tmp_path / "run"), *BASE, *SMALL,
         "--backbone-weights", str(sources["resnet18"])],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "backbone_weights" in err and "'small'" in err


def test_resolved_config_trains_the_same_model_again(trained, tmp_path, capsys):
    _, run_dir = trained
    again = tmp_path / "again"
    code, _, err = run(["train", "--config", str(run_dir / "resolved_config.json"), "--out", str(again)], capsys)
    assert code == 0, err
    expected, got = load_file(run_dir / "model.safetensors"), load_file(again / "model.safetensors")
    # The same settings, data and thread count replay the same float ops.
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []


@pytest.mark.parametrize("quiet", [False, True])
def test_no_progress_also_silences_the_transformers_loading_bar(folder, tmp_path, quiet):
    # A real `valfusion train` process: transformers reads the setting when it is imported.
    bert = write_tiny_bert(tmp_path / "bert")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["HF_HUB_OFFLINE"] = "1"
    base = [o for o in BASE if o != "--no-progress"]
    command = [
        sys.executable, "-m", "valfusion", "train", "--data", str(folder), "--out",
        str(tmp_path / "run"), *base, *SMALL, "--text-encoder", f"hf:{bert}",
        *(["--no-progress"] if quiet else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("Loading weights" in done.stderr) is not quiet
