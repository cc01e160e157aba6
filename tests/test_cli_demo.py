"""``valfusion demo --quick``: the main job end to end, in the test suite."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from valfusion.cli import main
from valfusion.engine.demo import DEMO_COMPOSERS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    return code, out, stdout.getvalue(), stderr.getvalue()


@pytest.mark.slow
def test_quick_demo_exits_successfully(demo):
    code, _, _, err = demo
    assert code == 0, err


@pytest.mark.slow
def test_quick_demo_writes_results_for_every_composer(demo):
    _, out, _, _ = demo
    results = json.loads((out / "results.json").read_text())
    assert list(results["composers"]) == list(DEMO_COMPOSERS)
    assert results["protocol"] == "synthetic"
    for entry in results["composers"].values():
        for k in (1, 10, 50):
            assert 0.0 <= entry[f"recall@{k}"] <= 1.0
        assert entry["recall@1"] <= entry["recall@10"] <= entry["recall@50"]


@pytest.mark.slow
def test_every_composer_trained_with_the_same_budget(demo):
    _, out, _, _ = demo
    configs = [
        json.loads((out / "runs" / name / "train_config.json").read_text()) for name in DEMO_COMPOSERS
    ]
    for config in configs:
        config["model"].pop("composer")
    assert all(config == configs[0] for config in configs)


@pytest.mark.slow
def test_per_edit_kind_counts_add_up_to_all_queries(demo):
    _, out, _, _ = demo
    results = json.loads((out / "results.json").read_text())
    total = results["benchmark"]["num_queries"]
    for entry in results["composers"].values():
        assert sum(v["num_queries"] for v in entry["by_edit_kind"].values()) == total
        assert sum(v["num_queries"] for v in entry["by_location"].values()) == total


@pytest.mark.slow
def test_quick_demo_draws_the_three_pictures(demo):
    _, out, _, _ = demo
    for name in ("learning_curves.png", "attention_maps.png", "top_results.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.mark.slow
def test_quick_demo_prints_the_table_with_the_protocol_and_where_it_wrote(demo):
    _, out, stdout, _ = demo
    assert "protocol 'synthetic'" in stdout
    for name in DEMO_COMPOSERS:
        assert any(line.startswith(name + " ") for line in stdout.splitlines())
    assert str(out / "results.json") in stdout


def test_demo_with_an_unknown_composer_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--composers", "val", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "nope" in err


def test_demo_help_names_the_default_composers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert f"(default: {' '.join(DEMO_COMPOSERS)})" in " ".join(printed.getvalue().split())
