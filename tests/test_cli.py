"""The ``valfusion`` command: help, one-line user errors, the generic folder round trip, search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from valfusion import __version__
from valfusion.cli import build_parser, main

COMMANDS = ("demo", "train", "evaluate", "search", "bench")
TINY = [
    "--steps", "3", "--batch-size", "4", "--image-size", "32", "--channels", "4,8,8",
    "--word-dim", "8", "--text-hidden-dim", "8", "--text-dim", "8", "--no-progress", "--device", "cpu",
]
COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 230), "yellow": (240, 220, 30)}
CELLS = {"left": 2, "right": 18}


def _write_image(path: Path, color: str, cell: str) -> None:
    image = Image.new("RGB", (32, 32), (250, 250, 250))
    x = CELLS[cell]
    for i in range(x, x + 12):
        for j in range(10, 22):
            image.putpixel((i, j), COLORS[color])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _line(reference: str, text: str, target) -> str:
    return json.dumps({"reference": reference, "text": text, "target": target})


def write_folder(root: Path) -> Path:
    """A generic-format folder with real PNG files: 8 images, 16 train and 6 test triplets."""
    names = {}
    for color in COLORS:
        for cell in CELLS:
            name = f"img/{color}_{cell}.png"
            _write_image(root / name, color, cell)
            names[color, cell] = name
    train, test = [], []
    for (color, cell), name in names.items():
        for other in COLORS:
            if other != color and len(train) < 16:
                train.append(_line(name, f"make it {other}", names[other, cell]))
    for (color, cell), name in list(names.items())[:5]:
        moved = "right" if cell == "left" else "left"
        test.append(_line(name, f"move it to the {moved}", names[color, moved]))
    test.append(_line(names["red", "left"], "make it blue or green", [names["blue", "left"], names["green", "left"]]))
    (root / "train.jsonl").write_text("\n".join(train) + "\n")
    (root / "test.jsonl").write_text("\n".join(test) + "\n")
    return root


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"valfusion {__version__}"


def test_python_dash_m_valfusion_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "valfusion", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"valfusion {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command].populated()
    for action in subparser._actions:
        assert action.help, f"{command}: option {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in text


def test_unknown_composer_is_one_line_and_exit_status_2(capsys, tmp_path):
    code = None
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "synthetic", "--out", str(tmp_path / "run"), "--composer", "transformer9000"])
    code = exit_info.value.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "transformer9000" in err and "Traceback" not in err


def test_bad_option_value_is_one_line_and_exit_status_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "synthetic", "--out", str(tmp_path / "run"), "--steps", "-3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--steps" in err


def test_missing_data_folder_is_one_line_and_exit_status_2(capsys, tmp_path):
    code, _, err = run(["train", "--data", f"folder:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "run"), *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err


def test_evaluate_without_a_trained_model_is_one_line(capsys, tmp_path):
    code, _, err = run(["evaluate", str(tmp_path), "--data", "synthetic"], capsys)
    assert code == 2 and err.count("\n") == 1 and "model" in err


def test_generic_folder_round_trips_through_train_and_evaluate(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)
    assert code == 0, err
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "step_0000003.pt").is_file()
    code, out, err = run(["evaluate", str(run_dir), "--data", str(folder)], capsys)
    assert code == 0, err
    metrics = evaluation_result(out)
    for key in ("recall@1", "recall@10", "recall@50"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["protocol"] == "val"
    assert metrics["num_queries"] == 6
    # The "val" gallery: the union of the test references and targets.
    records = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    union = {r["reference"] for r in records}
    union |= {t for r in records for t in ([r["target"]] if isinstance(r["target"], str) else r["target"])}
    assert metrics["gallery_size"] == len(union) < 10
    # Fewer than 10 gallery items: every query's target is within its top 10.
    assert metrics["recall@10"] == 1.0
    assert "R@10" in out and "protocol: val" in out


def evaluation_result(out: str) -> dict:
    """The result file `valfusion evaluate` wrote, read from the path it printed."""
    path = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("metrics: "))
    return json.loads(Path(path).read_text())


def test_second_train_into_the_same_run_dir_needs_resume(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    code, _, err = run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)
    assert code == 2 and "--resume" in err and err.count("\n") == 1


def test_resume_of_a_run_without_checkpoint_is_one_line(capsys, tmp_path):
    code, _, err = run(["train", "--data", "synthetic", "--out", str(tmp_path), "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err and err.count("\n") == 1


def _bad_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


def _train_error(folder: Path, tmp_path: Path, capsys) -> str:
    code, _, err = run(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    return err


def test_missing_image_names_the_file_and_line(capsys, tmp_path):
    folder = _bad_folder(tmp_path)
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[1] = _line("img/red_left.png", "make it purple", "img/purple_left.png")
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    err = _train_error(folder, tmp_path, capsys)
    assert "train.jsonl:2" in err and "purple_left.png" in err


def test_malformed_json_line_names_the_file_and_line(capsys, tmp_path):
    folder = _bad_folder(tmp_path)
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = '{"reference": "img/red_left.png", "text": "oops"'
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    err = _train_error(folder, tmp_path, capsys)
    assert "train.jsonl:3" in err


def test_empty_split_names_the_file(capsys, tmp_path):
    folder = _bad_folder(tmp_path)
    (folder / "test.jsonl").write_text("")
    err = _train_error(folder, tmp_path, capsys)
    assert "test.jsonl" in err and "empty" in err


def test_target_missing_from_the_gallery_names_the_file_and_line(capsys, tmp_path):
    folder = _bad_folder(tmp_path)
    test_lines = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    gallery = sorted({t["reference"] for t in test_lines} | {test_lines[0]["target"]})
    # Every target but the one of line 2 is listed.
    gallery += [t["target"] for t in test_lines[2:] if isinstance(t["target"], str)]
    gallery += [x for t in test_lines if isinstance(t["target"], list) for x in t["target"]]
    gallery = sorted(set(gallery) - {test_lines[1]["target"]})
    (folder / "gallery.txt").write_text("\n".join(gallery) + "\n")
    err = _train_error(folder, tmp_path, capsys)
    assert "test.jsonl:2" in err and "gallery" in err


def test_search_prints_ranked_results_and_draws_a_picture(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    picture = tmp_path / "found.png"
    code, out, err = run(
        ["search", str(run_dir), "--image", str(folder / "img/red_left.png"), "--text", "make it blue",
         "--gallery", str(folder), "-k", "3", "--picture", str(picture), "--exclude", "img/red_left.png"],
        capsys,
    )
    assert code == 0, err
    ranked = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in ranked] == [1, 2, 3]
    scores = [float(r[1]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(r[2].startswith("img/") for r in ranked)
    assert "img/red_left.png" not in [r[2] for r in ranked]  # the query image, excluded
    assert picture.is_file() and picture.stat().st_size > 0


def test_search_with_a_missing_query_image_is_one_line(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    code, _, err = run(
        ["search", str(run_dir), "--image", str(tmp_path / "nope.png"), "--text", "x", "--gallery", str(folder)],
        capsys,
    )
    assert code == 2 and "nope.png" in err and err.count("\n") == 1


def test_bench_forwards_its_arguments_to_the_benchmarks(capfd):
    code = main(["bench", "no_such_benchmark"])
    err = capfd.readouterr().err
    assert code == 2 and "no_such_benchmark" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_bench_on_cuda_without_cuda_is_one_line(capfd, tmp_path):
    code = main(["bench", "losses", "--device", "cuda", "--out-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 2 and "--device cuda: CUDA is not available" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_interrupted_cli_run_resumes_to_the_same_model(capsys, tmp_path):
    import torch

    folder = write_folder(tmp_path / "data")
    options = [*TINY[:1], "6", *TINY[2:], "--checkpoint-every", "3"]  # 6 steps, checkpoint at 3
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert run(["train", "--data", str(folder), "--out", str(straight), *options], capsys)[0] == 0
    assert run(["train", "--data", str(folder), "--out", str(cut), *options], capsys)[0] == 0
    # Make `cut` look like a run killed between the checkpoints at steps 3 and 6.
    for name in ("checkpoints/step_0000006.pt", "model.safetensors", "metrics.json"):
        (cut / name).unlink()
    code, _, err = run(["train", "--data", str(folder), "--out", str(cut), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    from safetensors.torch import load_file

    expected = load_file(straight / "model.safetensors")
    got = load_file(cut / "model.safetensors")
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []


def test_resume_refuses_options_that_would_change_the_run(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    assert run(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY], capsys)[0] == 0
    code, _, err = run(
        ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--resume", "--lr", "0.5"], capsys
    )
    assert code == 2 and "--lr" in err and err.count("\n") == 1


FASHIONIQ = Path(__file__).parent / "fixtures" / "fashioniq"


@pytest.fixture(scope="module")
def fashioniq_dress(tmp_path_factory) -> Path:
    """The real FashionIQ dress validation annotations with 8 x 8 stand-in images."""
    root = tmp_path_factory.mktemp("fashioniq")
    for sub, name in (("captions", "cap.dress.val.json"), ("image_splits", "split.dress.val.json")):
        (root / sub).mkdir()
        (root / sub / name).write_bytes((FASHIONIQ / sub / name).read_bytes())
    pairs = json.loads((root / "captions" / "cap.dress.val.json").read_text())
    asins = set(json.loads((root / "image_splits" / "split.dress.val.json").read_text()))
    asins |= {p[key] for p in pairs for key in ("candidate", "target")}
    (root / "images").mkdir()
    for i, asin in enumerate(sorted(asins)):
        Image.new("RGB", (8, 8), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(root / "images" / f"{asin}.png")
    return root


def test_evaluate_on_fashioniq_reports_both_gallery_protocols_and_caption_modes(fashioniq_dress, capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(write_folder(tmp_path / "data")), "--out", str(run_dir), *TINY], capsys)[0] == 0
    pairs = len(json.loads((fashioniq_dress / "captions" / "cap.dress.val.json").read_text()))
    source = f"fashioniq:{fashioniq_dress}:dress"

    code, out, err = run(["evaluate", str(run_dir), "--data", source], capsys)
    assert code == 0, err
    val = evaluation_result(out)
    # The VAL paper's dress gallery (union of the validation queries' images): 2628.
    assert (val["protocol"], val["gallery_size"]) == ("val", 2628)
    assert (val["caption_mode"], val["num_queries"]) == ("separate", 2 * pairs)

    code, out, err = run(
        ["evaluate", str(run_dir), "--data", source, "--protocol", "original", "--caption-mode", "joined"], capsys
    )
    assert code == 0, err
    original = evaluation_result(out)
    # The whole dress validation image split: 3817 images.
    assert (original["protocol"], original["gallery_size"]) == ("original", 3817)
    assert (original["caption_mode"], original["num_queries"]) == ("joined", pairs)
    assert "protocol: original" in out and "caption mode: joined" in out


def test_protocol_option_on_a_source_without_protocols_is_one_line(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    assert run(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY], capsys)[0] == 0
    code, _, err = run(["evaluate", str(tmp_path / "run"), "--data", str(folder), "--protocol", "original"], capsys)
    assert code == 2 and err.count("\n") == 1 and "protocol" in err


def test_threads_option_sets_the_torch_thread_count(capsys, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        # Set before the command runs (this one then stops at once: nothing to resume).
        code, _, _ = run(["train", "--data", "synthetic", "--out", str(tmp_path), "--resume", "--threads", "2"], capsys)
        assert code == 2
        assert torch.get_num_threads() == 2 != before
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- bad model files, evaluate's result file, search's text and picture


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) of one tiny training run; copy the run before changing it."""
    root = tmp_path_factory.mktemp("trained")
    folder = write_folder(root / "data")
    assert main(["train", "--data", str(folder), "--out", str(root / "run"), *TINY]) == 0
    return folder, root / "run"


def copy_run(trained, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained[1], tmp_path / "run"))


class _MakesAFolder:
    """Unpickling this calls os.mkdir(path): a model.pt that would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def _bad_weights(kind: str, run_dir: Path, marker: Path) -> Path:
    """Spoil the run's weights; ``legacy-*`` kinds replace model.safetensors by a model.pt."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = run_dir / "model.safetensors"
    if kind.startswith("legacy-"):
        torch.save(load_file(weights), run_dir / "model.pt")
        weights.unlink()
        weights, kind = run_dir / "model.pt", kind.removeprefix("legacy-")
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "empty":
        weights.write_bytes(b"")
    elif kind == "crafted":
        torch.save({"backbone.stem.0.0.weight": _MakesAFolder(marker)}, weights)
    elif weights.suffix == ".pt":  # weights of another model configuration
        state = torch.load(weights, weights_only=True)
        state["text_encoder.embedding.weight"] = torch.zeros(3, 8)
        torch.save(state, weights)
    else:
        state = load_file(weights)
        state["text_encoder.embedding.weight"] = torch.zeros(3, 8)
        save_file(state, weights)
    return weights


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "mismatched", "legacy-truncated", "legacy-empty", "legacy-crafted",
             "legacy-mismatched"],
)
def test_evaluate_with_a_bad_model_file_is_one_line_naming_it(trained, capsys, tmp_path, kind):
    run_dir = copy_run(trained, tmp_path)
    weights = _bad_weights(kind, run_dir, tmp_path / "ran")
    code, _, err = run(["evaluate", str(run_dir), "--data", str(trained[0])], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(weights) in err and "RUN_DIR" in err
    assert "weights_only" not in err
    assert not (tmp_path / "ran").exists()  # the crafted file's code never ran


def test_evaluate_on_other_data_keeps_the_training_metrics(trained, capsys, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    training_metrics = (run_dir / "metrics.json").read_bytes()
    other = write_folder(tmp_path / "other")
    code, out, err = run(["evaluate", str(run_dir), "--data", str(other)], capsys)
    assert code == 0, err
    assert (run_dir / "metrics.json").read_bytes() == training_metrics
    written = sorted((run_dir / "evaluations").iterdir())
    assert len(written) == 1 and str(written[0]) in out
    result = json.loads(written[0].read_text())
    assert result["source"] == str(other) and result["num_queries"] == 6


def test_each_data_source_gets_its_own_evaluation_file(trained, capsys, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    sources = [trained[0], write_folder(tmp_path / "other")]
    for source in [*sources, sources[0]]:  # the first again: it replaces its own file
        assert run(["evaluate", str(run_dir), "--data", str(source)], capsys)[0] == 0
    written = sorted((run_dir / "evaluations").iterdir())
    assert len(written) == 2
    assert {json.loads(p.read_text())["source"] for p in written} == {str(s) for s in sources}


def _search(trained, capsys, *options: str, text: str = "make it blue"):
    folder, run_dir = trained
    return run(
        ["search", str(run_dir), "--image", str(folder / "img/red_left.png"), "--text", text,
         "--gallery", str(folder), "-k", "2", *options],
        capsys,
    )


@pytest.mark.parametrize("text", ["$\\frac$ price", "a $x^$ b"])
def test_search_draws_a_text_that_matplotlib_would_read_as_math(trained, capsys, tmp_path, text):
    picture = tmp_path / "found.png"
    code, _, err = _search(trained, capsys, "--picture", str(picture), text=text)
    assert code == 0, err
    assert picture.is_file() and picture.stat().st_size > 0


def test_search_with_an_undecodable_text_is_one_line(trained, capsys, tmp_path):
    # What `--text $'\xff'` becomes in a UTF-8 terminal: a lone surrogate escape.
    picture = tmp_path / "found.png"
    code, _, err = _search(
        trained, capsys, "--picture", str(picture), text="make it \udcff"
    )
    assert code == 2 and err.count("\n") == 1 and "--text" in err and "Traceback" not in err
    assert not picture.exists()


@pytest.mark.parametrize("where", ["folder", "format", "under a file"])
def test_search_with_an_unusable_picture_path_is_one_line_before_any_work(trained, capsys, tmp_path, where):
    target = {
        "folder": tmp_path,
        "format": tmp_path / "found.docx",
        "under a file": trained[0] / "train.jsonl" / "found.png",
    }[where]
    code, out, err = _search(trained, capsys, "--picture", str(target))
    assert code == 2 and err.count("\n") == 1 and "--picture" in err and "Traceback" not in err
    assert out == ""  # refused before the model was loaded or the gallery ranked


def test_search_with_only_unknown_words_warns_in_one_line(trained, capsys, tmp_path):
    picture = tmp_path / "found.png"
    code, _, err = _search(
        trained, capsys, "--picture", str(picture), text="zebra quokka"
    )
    assert code == 0, err
    assert err.count("\n") == 1 and "warning" in err and "'zebra quokka'" in err and "unknown" in err
    assert picture.is_file()


def test_search_warnings_about_missing_glyphs_are_one_line(trained, capsys, tmp_path):
    picture = tmp_path / "found.png"
    code, _, err = _search(
        trained, capsys, "--picture", str(picture), text="make it 红色"
    )
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("valfusion search: warning:") and "glyph" in lines[0]
    assert picture.is_file()


def test_resume_refuses_other_data_naming_each_difference(capsys, tmp_path):
    import torch

    threads = torch.get_num_threads()
    small = ["--data", "synthetic", "-o", "num_train=16", "-o", "num_test=8"]
    run_dir = tmp_path / "run"
    assert run(["train", *small, "--out", str(run_dir), *TINY], capsys)[0] == 0
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    folder = write_folder(tmp_path / "data")
    try:
        code, _, err = run(
            ["train", "--data", str(folder), "-o", "num_train=32", "--image-size", "48", "--threads", str(threads + 1),
             "--out", str(run_dir), "--resume", "--no-progress"],
            capsys,
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 2 and err.count("\n") == 1, err
    for part in (
        f"--data: saved 'synthetic', given 'folder:{folder.resolve()}'",
        "-o num_train: saved 16, given 32",
        "--image-size: saved 32, given 48",
        f"--threads: saved {threads}, given {threads + 1}",
    ):
        assert part in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_resume_after_the_annotations_changed_is_refused(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace("make it", "make it a bit")
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run(["train", "--data", str(folder), "--out", str(run_dir), "--resume", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "annotations: saved fingerprint" in err


def test_resume_accepts_options_given_again_with_their_saved_values(capsys, tmp_path):
    folder = write_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run(["train", "--data", str(folder), "--out", str(run_dir), *TINY], capsys)[0] == 0
    (run_dir / "metrics.json").unlink()
    # The same training, model and data options again, and one that may change (--keep-checkpoints).
    code, _, err = run(
        ["train", "--data", str(folder), "--out", str(run_dir), "--resume", *TINY, "--keep-checkpoints", "1"], capsys
    )
    assert code == 0, err
    assert (run_dir / "metrics.json").is_file()


def test_diverging_run_exits_1_with_one_line_and_a_resumable_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "run"
    diverging = [*TINY[:1], "10", *TINY[2:], "--lr", "1e8", "--grad-clip", "0", "--warmup-steps", "0"]
    code, _, err = run(["train", "--data", str(write_folder(tmp_path / "data")), "--out", str(run_dir), *diverging], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    saved = sorted((run_dir / "checkpoints").iterdir())
    assert len(saved) == 1 and str(saved[0]) in err and "before the optimiser step" in err
    # Resuming loads it and replays the same step to the same stop.
    code, _, again = run(["train", "--data", str(tmp_path / "data"), "--out", str(run_dir), "--resume", "--no-progress"], capsys)
    assert code == 1 and str(saved[0]) in again and sorted((run_dir / "checkpoints").iterdir()) == saved
