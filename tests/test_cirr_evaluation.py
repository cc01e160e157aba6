"""CIRR end to end through the command line: train a tiny model, evaluate val, write a test1 submission.

The evaluation's numbers are checked against the submission files of the same model on
the same split: Recall@K is the fraction of queries whose ``target_hard`` is among the
first K ids of the recall file, Recall_subset@K the same on the subset file (both
computed here from the files and the fixture's captions). The submission files are
checked against the format of the released examples (tests/fixtures/cirr/submission_examples).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_cirr import FIXTURES, make_cirr_root

from valfusion.cli import main

TINY = [
    "--steps", "2", "--batch-size", "2", "--image-size", "16", "--channels", "4,8,8",
    "--word-dim", "8", "--text-hidden-dim", "8", "--text-dim", "8", "--no-progress", "--device", "cpu",
]
EXAMPLES = FIXTURES / "submission_examples"


@pytest.fixture(scope="module")
def trained_on_cirr(tmp_path_factory) -> tuple[Path, Path]:
    """(CIRR folder, run folder): a tiny model trained on the fixture's train captions."""
    root = tmp_path_factory.mktemp("cirr_run")
    data = make_cirr_root(root / "cirr")
    assert main(["train", "--data", f"cirr:{data}", "--out", str(root / "run"), *TINY]) == 0
    return data, root / "run"


def _run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _hits(lists: dict, captions: list[dict], k: int) -> float:
    return sum(q["target_hard"] in lists[str(q["pairid"])][:k] for q in captions) / len(captions)


def _check_format(path: Path, example: Path, length: int, split_ids: set[str], captions: list[dict]) -> dict:
    written, reference = json.loads(path.read_text()), json.loads(example.read_text())
    assert (written["version"], written["metric"]) == (reference["version"], reference["metric"])
    assert set(written) == {"version", "metric"} | {str(q["pairid"]) for q in captions}
    for key, ids in reference.items():  # the example's own types and lengths
        if key not in ("version", "metric"):
            assert key.isdigit() and len(ids) == length and all(isinstance(i, str) for i in ids)
    for query in captions:
        ids = written[str(query["pairid"])]
        assert isinstance(ids, list) and len(ids) == length == len(set(ids))
        assert all(isinstance(i, str) and i in split_ids for i in ids)
        assert query["reference"] not in ids  # the reference is removed from its ranking
    return written


def test_val_evaluation_reports_cirr_metrics_that_the_submission_files_reproduce(trained_on_cirr, capsys, tmp_path):
    data, run_dir = trained_on_cirr
    captions = json.loads((FIXTURES / "captions" / "cap.rc2.val.json").read_text())
    split_ids = set(json.loads((FIXTURES / "image_splits" / "split.rc2.val.json").read_text()))
    code, out, err = _run(
        ["evaluate", str(run_dir), "--data", f"cirr:{data}", "--submission", str(tmp_path / "sub"), "--device", "cpu"],
        capsys,
    )
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1].removeprefix("metrics: "))
    metrics = json.loads(path.read_text())
    assert (metrics["protocol"], metrics["num_queries"], metrics["gallery_size"]) == ("cirr", 300, 327)
    assert sorted(k for k in metrics if k.startswith("recall")) == sorted(
        ["recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2", "recall_subset@3"]
    )
    assert "Rs@3" in out

    recall = _check_format(
        tmp_path / "sub" / "val_pred_ranks_recall.json",
        EXAMPLES / "test1_pred_ranks_recall_first5.json", 50, split_ids, captions,
    )
    subset = _check_format(
        tmp_path / "sub" / "val_pred_ranks_recall_subset.json",
        EXAMPLES / "test1_pred_ranks_recall_subset_first5.json", 3, split_ids, captions,
    )
    for query in captions:
        assert set(subset[str(query["pairid"])]) <= set(query["img_set"]["members"]) - {query["reference"]}
    # Both are counts over the 300 queries: equal up to float rounding of the division.
    for k in (1, 5, 10, 50):
        assert metrics[f"recall@{k}"] == pytest.approx(_hits(recall, captions, k), abs=1e-9)
    for k in (1, 2, 3):
        assert metrics[f"recall_subset@{k}"] == pytest.approx(_hits(subset, captions, k), abs=1e-9)
    assert metrics["recall_subset@3"] > 0  # 3 of 5 candidates: a random ranking hits 60 %


def test_test1_submission_has_every_pairid_in_the_server_format(trained_on_cirr, capsys, tmp_path):
    data, run_dir = trained_on_cirr
    captions = json.loads((FIXTURES / "captions" / "cap.rc2.test1.json").read_text())
    split_ids = set(json.loads((FIXTURES / "image_splits" / "split.rc2.test1.json").read_text()))
    out_dir = tmp_path / "submission"
    evaluations = run_dir / "evaluations"
    before = sorted(evaluations.iterdir()) if evaluations.exists() else []
    code, out, err = _run(
        ["evaluate", str(run_dir), "--data", f"cirr:{data}", "--split", "test1", "--submission", str(out_dir)], capsys
    )
    assert code == 0, err
    assert f"submission (recall): {out_dir / 'test1_pred_ranks_recall.json'}" in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "test1_pred_ranks_recall.json", "test1_pred_ranks_recall_subset.json"
    ]
    _check_format(out_dir / "test1_pred_ranks_recall.json", EXAMPLES / "test1_pred_ranks_recall_first5.json", 50, split_ids, captions)
    subset = _check_format(
        out_dir / "test1_pred_ranks_recall_subset.json", EXAMPLES / "test1_pred_ranks_recall_subset_first5.json",
        3, split_ids, captions,
    )
    assert str(27098) in subset  # the query with the released empty caption
    # No recall without targets: no evaluation file is written for test1.
    assert (sorted(evaluations.iterdir()) if evaluations.exists() else []) == before


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--split", "test1"], "--split: CIRR's test1 split has no public targets"),
        (["--data", "synthetic", "--submission", "x"], "--submission: only for a CIRR source"),
    ],
)
def test_cirr_options_misused_are_one_line(trained_on_cirr, capsys, extra, expected):
    data, run_dir = trained_on_cirr
    args = ["evaluate", str(run_dir), "--data", f"cirr:{data}", *extra]
    code, _, err = _run(args, capsys)
    assert code == 2 and err.count("\n") == 1 and expected in err


def _ddp_worker(rank: int, store: str, data: str, run_dir: str, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from valfusion.data import load_cirr
    from valfusion.engine import evaluate
    from valfusion.models import VAL

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120)
    )
    try:
        metrics = evaluate(VAL.from_pretrained(run_dir), load_cirr(data, splits=("test",), image_size=16))
        Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_cirr_evaluation_agrees_with_one_process(trained_on_cirr, tmp_path):
    import torch.multiprocessing as mp

    from valfusion.data import load_cirr
    from valfusion.engine import evaluate
    from valfusion.models import VAL

    data, run_dir = trained_on_cirr
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(data), str(run_dir), str(tmp_path)), nprocs=2, join=True)
    sharded = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sharded[0] == sharded[1]  # every rank reports the whole query set
    single = evaluate(VAL.from_pretrained(run_dir), load_cirr(data, splits=("test",), image_size=16))
    assert sharded[0]["num_queries"] == single["num_queries"] == 300
    for key in ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2", "recall_subset@3"):
        # Shards are embedded in other batches: allow one query's rank to move across a
        # cut-off through float rounding, no more.
        assert abs(sharded[0][key] - single[key]) <= 1 / 300, key
