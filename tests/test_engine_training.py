"""The training engine on tiny settings: learning, exact resume, run directory, evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.engine import (
    TrainConfig,
    build_model,
    evaluate,
    latest_checkpoint,
    load_checkpoint,
    train,
)
from valfusion.engine.evaluation import embed_split
from valfusion.engine.sampler import ResumableSampler
from valfusion.engine.schedule import WarmupCosine

TINY_MODEL = {
    "backbone_channels": (8, 16, 32),
    "image_size": 32,
    "word_dim": 16,
    "text_hidden_dim": 16,
    "text_dim": 16,
}


@pytest.fixture(scope="module")
def data():
    return SyntheticBenchmark(num_train=128, num_test=32, seed=3, image_size=32).data()


def tiny_config(**overrides) -> TrainConfig:
    options = {
        "steps": 20,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 2,
        "device": "cpu",
        "log_every": 5,
        "model": dict(TINY_MODEL),
    }
    options.update(overrides)
    return TrainConfig(**options)


def test_short_training_improves_recall_over_the_untrained_model(data):
    config = tiny_config(steps=60)
    before = evaluate(build_model(data, config), data)
    after = train(data, config, progress=False).metrics
    assert after["recall@10"] > before["recall@10"] + 0.1
    assert after["recall@1"] > before["recall@1"]


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    config = tiny_config(steps=20)
    straight = train(data, config, tmp_path / "straight", progress=False)
    first = train(data, config, tmp_path / "resumed", until=10, progress=False)
    assert first.step == 10 and not first.finished and first.metrics is None
    resumed = train(data, config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.step == 20 and resumed.finished
    expected = straight.model.state_dict()
    got = resumed.model.state_dict()
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert different == []
    assert resumed.metrics["recall@10"] == straight.metrics["recall@10"]


def test_resume_without_restoring_the_rng_would_differ(data, tmp_path):
    # The resume test above could only pass by accident if dropout drew nothing: check
    # that two runs with different seeds for dropout alone do not end identical.
    config = tiny_config(steps=6)
    a = train(data, config, progress=False).model.state_dict()
    b = train(data, tiny_config(steps=6, seed=1), progress=False).model.state_dict()
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_resume_rejects_a_different_training_configuration(data, tmp_path):
    train(data, tiny_config(steps=8), tmp_path, until=4, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(data, tiny_config(steps=8, lr=1e-2), tmp_path, resume=True, progress=False)


def test_run_directory_holds_model_config_metrics_history_and_checkpoints(data, tmp_path):
    config = tiny_config(steps=8, checkpoint_every=4, eval_every=4)
    train(data, config, tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "vocabulary.json", "train_config.json", "metrics.json",
            "history.json", "checkpoints", "logs"} <= names
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["metrics.csv"]  # the default logger
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000004.pt", "step_0000008.pt"
    ]
    assert TrainConfig.from_dict(json.loads((tmp_path / "train_config.json").read_text())) == config
    history = json.loads((tmp_path / "history.json").read_text())
    assert [e["step"] for e in history["eval"]] == [4, 8]
    assert [e["step"] for e in history["train"]] == [5, 8]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["protocol"] == "synthetic" and metrics["step"] == 8
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_checkpoint_loads_with_weights_only_and_records_the_sampler_position(data, tmp_path):
    train(data, tiny_config(steps=20), tmp_path, until=13, progress=False)
    path = latest_checkpoint(tmp_path / "checkpoints")
    assert path.name == "step_0000013.pt"
    state = torch.load(path, weights_only=True)  # no code runs on load
    assert state["step"] == 13 and state["format"] == load_checkpoint(path)["format"]
    batches_per_epoch = 128 // 16
    assert state["sampler"]["epoch"] == 13 // batches_per_epoch
    assert state["sampler"]["start"] == (13 % batches_per_epoch) * 16
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)


def test_saved_model_reloads_with_the_evaluated_recall(data, tmp_path):
    from valfusion.models import VAL

    result = train(data, tiny_config(steps=6), tmp_path, progress=False)
    reloaded = VAL.from_pretrained(tmp_path)
    assert evaluate(reloaded, data)["recall@10"] == result.metrics["recall@10"]


def test_bf16_mixed_precision_trains_on_cpu(data):
    result = train(data, tiny_config(steps=4, amp="bf16"), progress=False)
    assert all(math.isfinite(e["loss"]) for e in result.history["train"])


def test_fp16_on_the_cpu_is_rejected_naming_amp(data):
    with pytest.raises(ValueError, match="amp"):
        train(data, tiny_config(steps=2, amp="fp16", device="cpu"), progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("lr", 0.0), ("batch_size", -1), ("amp", "fp8"), ("grad_clip", -1.0), ("device", "tpu"),
     ("logger", "wandb")],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_config_rejects_an_unknown_composer_before_any_work():
    with pytest.raises(ValueError, match="composer"):
        tiny_config(model={**TINY_MODEL, "composer": "nope"})


def test_evaluate_matches_brute_force_recall_with_the_reference_excluded(data):
    model = build_model(data, tiny_config())
    split = data.test
    metrics = evaluate(model, data, ks=(1, 5, 10))
    queries, gallery = embed_split(model, split)
    # Independent statement: rank = number of gallery items (reference excluded) scoring
    # strictly higher than the best correct target, ties to the lower index.
    similarity = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    ranks = []
    for i, triplet in enumerate(split.triplets):
        scores = similarity[i].clone()
        reference = split.gallery.index(triplet.reference)
        scores[reference] = -math.inf
        targets = [split.gallery.index(t) for t in triplet.targets]
        best = max(targets, key=lambda j: (scores[j].item(), -j))
        ahead = sum(
            1 for j in range(len(split.gallery))
            if scores[j] > scores[best] or (scores[j] == scores[best] and j < best)
        )
        ranks.append(ahead)
    for k in (1, 5, 10):
        assert metrics[f"recall@{k}"] == pytest.approx(sum(r < k for r in ranks) / len(ranks))
    assert metrics["num_queries"] == len(split) and metrics["gallery_size"] == len(split.gallery)
    assert metrics["protocol"] == "synthetic" and len(metrics["gallery_hash"]) == 12


def test_learning_rate_follows_linear_warmup_then_cosine():
    schedule = WarmupCosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi/2) = 0
    assert schedule(110) == pytest.approx(0.1)


def test_sampler_shards_are_disjoint_and_cover_one_permutation():
    shards = [list(ResumableSampler(50, seed=7, rank=r, world_size=3)) for r in range(3)]
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat)) == 48 and set(flat) <= set(range(50))
    assert all(len(s) == 16 for s in shards)


def test_sampler_started_mid_epoch_continues_the_same_order():
    full = ResumableSampler(40, seed=1)
    full.set_epoch(3)
    tail = ResumableSampler(40, seed=1)
    tail.set_epoch(3, start=25)
    assert list(tail) == list(full)[25:]
    other = ResumableSampler(40, seed=1)
    other.set_epoch(4)
    assert list(other) != list(full)
