"""``valfusion demo --quick``: the main job end to end, in the test suite."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics

import pytest

from valfusion.cli import main
from valfusion.engine.demo import DEMO_COMPOSERS, RANKING_COLUMNS


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
    (run,) = results["runs"]
    assert run["seed"] == 0 and list(run["composers"]) == list(DEMO_COMPOSERS)
    for entry in run["composers"].values():
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
    for entry in results["runs"][0]["composers"].values():
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


# ---------------------------------------------------------------------------- several seeds
# A tiny two-seed demo (seeds 1 and 2, two composers, 4 steps) and the one-seed demo of
# seed 2 with the same settings: the files it writes, and that every figure in them agrees
# with the others and with an independent computation.

TINY = ["--quick", "--steps", "4", "--composers", "val", "tirg_pooled", "--no-progress"]


def _run(out, *args):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", *TINY, "--out", str(out), *args])
    assert code == 0, stderr.getvalue()
    return json.loads((out / "results.json").read_text()), stdout.getvalue()


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_seeds")
    results, stdout = _run(out, "--seed", "1", "--seeds", "2")
    return out, results, stdout


@pytest.fixture(scope="module")
def seed_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_two")
    results, stdout = _run(out, "--seed", "2")
    return out, results, stdout


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


@pytest.mark.slow
def test_one_seed_keeps_one_figure_per_cell(seed_two):
    out, results, stdout = seed_two
    row = next(line for line in stdout.splitlines() if line.startswith("val "))
    assert row.split()[1:4] == [f"{100 * results['composers']['val'][f'recall@{k}']['mean']:.1f}" for k in (1, 10, 50)]
    assert "±" not in stdout and "±" not in (out / "results.md").read_text()
    assert results["composers"]["val"]["recall@1"]["std"] is None


@pytest.mark.slow
def test_seeds_count_from_seed(two_seeds):
    _, results, _ = two_seeds
    assert results["seeds"] == [1, 2]
    assert [run["seed"] for run in results["runs"]] == [1, 2]


@pytest.mark.slow
def test_each_seed_of_a_multi_seed_demo_is_the_one_seed_demo(two_seeds, seed_two):
    _, several, _ = two_seeds
    _, single, _ = seed_two
    queries = single["benchmark"]["num_queries"]
    assert several["runs"][1]["seed"] == 2 and single["seeds"] == [2]
    for composer in ("val", "tirg_pooled"):
        for k in (1, 10, 50):
            # Same seed, same data and training: the same ranks, so at most rounding apart.
            a = several["runs"][1]["composers"][composer][f"recall@{k}"]
            b = single["composers"][composer][f"recall@{k}"]["mean"]
            assert abs(a - b) < 0.5 / queries


@pytest.mark.slow
def test_mean_std_and_range_over_seeds_match_an_independent_computation(two_seeds):
    _, results, _ = two_seeds
    for composer, summary in results["composers"].items():
        per_seed = [run["composers"][composer] for run in results["runs"]]
        for path in [(f"recall@{k}",) for k in (1, 10, 50)] + [
            ("by_location", "names a cell", "recall@1"), ("by_edit_kind", "move", "recall@10")
        ]:
            values = []
            for entry in per_seed:
                for key in path:
                    entry = entry[key]
                values.append(entry)
            stats = summary
            for key in path:
                stats = stats[key]
            assert stats["values"] == pytest.approx(values, abs=1e-12)
            assert stats["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert stats["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert (stats["min"], stats["max"]) == (min(values), max(values))


@pytest.mark.slow
def test_lead_is_the_difference_paired_by_seed(two_seeds):
    _, results, _ = two_seeds
    assert results["leads"]["reference"] == "val"
    lead = results["leads"]["over"]["tirg_pooled"]["recall@1"]
    differences = [
        run["composers"]["val"]["recall@1"] - run["composers"]["tirg_pooled"]["recall@1"] for run in results["runs"]
    ]
    assert lead["values"] == pytest.approx(differences, abs=1e-12)
    assert lead["mean"] == pytest.approx(statistics.mean(differences), abs=1e-12)
    assert lead["std"] == pytest.approx(statistics.stdev(differences), abs=1e-12)


@pytest.mark.slow
def test_table_shows_mean_std_and_range_of_every_recall_column(two_seeds):
    out, results, stdout = two_seeds
    markdown = (out / "results.md").read_text()
    for composer, summary in results["composers"].items():
        for k in (1, 10, 50):
            s = summary[f"recall@{k}"]
            cell = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} [{100 * s['min']:.1f}, {100 * s['max']:.1f}]"
            row = next(line for line in stdout.splitlines() if line.startswith(composer + " "))
            assert cell in row
            assert cell in next(line for line in markdown.splitlines() if line.startswith(f"| {composer} |"))


@pytest.mark.slow
def test_table_shows_each_seeds_recall_at_1(two_seeds):
    _, results, stdout = two_seeds
    lines = stdout.splitlines()
    section = lines.index("R@1 (%) in each seed:")
    assert lines[section + 1].split() == ["composer", "seed", "1", "seed", "2"]
    for composer in ("val", "tirg_pooled"):
        row = next(line for line in lines[section:] if line.startswith(composer + " "))
        assert row.split()[1:] == [f"{100 * run['composers'][composer]['recall@1']:.1f}" for run in results["runs"]]


@pytest.mark.slow
def test_table_is_written_as_markdown_and_csv(two_seeds):
    out, results, _ = two_seeds
    markdown = (out / "results.md").read_text().splitlines()
    header = "| composer | R@1 | R@10 | R@50 | R@1 cell | R@10 cell | R@1 no cell | R@10 no cell | train s |"
    assert header in markdown
    assert "| val minus | R@1 | R@10 | R@50 | R@1 cell | R@10 cell | R@1 no cell | R@10 no cell |" in markdown
    columns, rows = _csv(out / "results.csv")
    stats = ("mean", "std", "min", "max")
    assert columns == ["composer", "subset", "seeds", "num_queries", *(f"recall@{k}_{s}" for k in (1, 10, 50) for s in stats)]
    kinds = sorted(results["composers"]["val"]["by_edit_kind"])
    assert [(r["composer"], r["subset"]) for r in rows] == [
        (c, s) for c in ("val", "tirg_pooled") for s in ("all", "names a cell", "no cell", *kinds)
    ]
    for row in rows:
        summary = results["composers"][row["composer"]]
        entry = summary if row["subset"] == "all" else {**summary["by_location"], **summary["by_edit_kind"]}[row["subset"]]
        for k in (1, 10, 50):
            assert float(row[f"recall@{k}_mean"]) == pytest.approx(entry[f"recall@{k}"]["mean"], abs=1e-9)
            assert float(row[f"recall@{k}_std"]) == pytest.approx(entry[f"recall@{k}"]["std"], abs=1e-9)


@pytest.mark.slow
def test_ranking_file_has_one_row_per_seed_and_query(two_seeds):
    out, results, _ = two_seeds
    queries = results["benchmark"]["num_queries"]
    for composer in ("val", "tirg_pooled"):
        columns, rows = _csv(out / "rankings" / f"{composer}.csv")
        assert tuple(columns) == RANKING_COLUMNS
        assert [(int(r["seed"]), int(r["query"])) for r in rows] == [(s, q) for s in (1, 2) for q in range(queries)]


@pytest.mark.slow
def test_recall_recomputed_from_the_ranking_file_is_the_reported_recall(two_seeds):
    out, results, _ = two_seeds
    for composer in ("val", "tirg_pooled"):
        _, rows = _csv(out / "rankings" / f"{composer}.csv")
        for run in results["runs"]:
            ranks = [int(r["rank"]) for r in rows if int(r["seed"]) == run["seed"]]
            for k in (1, 10, 50):
                recomputed = sum(rank <= k for rank in ranks) / len(ranks)
                assert abs(recomputed - run["composers"][composer][f"recall@{k}"]) < 0.5 / len(ranks)


@pytest.mark.slow
def test_rank_in_the_ranking_file_is_where_the_first_target_is_in_its_top_results(two_seeds):
    out, _, _ = two_seeds
    _, rows = _csv(out / "rankings" / "val.csv")
    for row in rows:
        targets, top = set(row["targets"].split()), row["top10"].split()
        hits = [i + 1 for i, image_id in enumerate(top) if image_id in targets]
        assert len(top) == 10 and row["reference"] not in top
        if int(row["rank"]) <= 10:
            assert hits[0] == int(row["rank"])
        else:
            assert hits == []


@pytest.mark.slow
@pytest.mark.parametrize("which", ["two_seeds", "seed_two"])
def test_no_checkpoint_duplicates_the_saved_model(which, request):
    out, _, _ = request.getfixturevalue(which)
    models = sorted(out.glob("runs/**/model.safetensors"))
    assert len(models) == 2 * (2 if which == "two_seeds" else 1)
    for model in models:
        assert list(model.parent.rglob("*.pt")) == []


@pytest.mark.slow
def test_one_seed_writes_the_tables_and_a_ranking_file_per_composer(seed_two):
    out, results, _ = seed_two
    assert (out / "results.md").read_text().startswith("Recall@K (%) on the synthetic benchmark")
    columns, rows = _csv(out / "results.csv")
    assert columns[:4] == ["composer", "subset", "seeds", "num_queries"] and len(rows) > 0
    queries = results["benchmark"]["num_queries"]
    for composer in ("val", "tirg_pooled"):
        columns, rows = _csv(out / "rankings" / f"{composer}.csv")
        assert tuple(columns) == RANKING_COLUMNS and len(rows) == queries
        recomputed = sum(int(r["rank"]) == 1 for r in rows) / queries
        assert abs(recomputed - results["composers"][composer]["recall@1"]["mean"]) < 0.5 / queries


def test_seed_list_and_seeds_together_are_a_usage_error(capsys, tmp_path):
    code = main(["demo", "--seed", "0,1", "--seeds", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seeds" in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("text", ["a", "1,1", "0,,2"])
def test_bad_seed_is_a_usage_error(text, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--seed", text, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and repr(text) in err
