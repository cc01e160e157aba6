"""The main job: VAL and its baselines on the built-in synthetic benchmark, one Recall@K table.

Every composer is trained with the same budget (steps, batch, learning rate, schedule,
seed, model size) on the same data; the table reports Recall@K under the benchmark's
protocol, overall, per edit kind, and split by whether the edit text names a grid cell
(the case spatial attention is meant for). Pictures show the learning curves, the
joint-attention maps of a few queries and their top results.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from valfusion._version import __version__
from valfusion.data.images import denormalize
from valfusion.data.split import DataSplit
from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.engine.config import TrainConfig
from valfusion.engine.evaluation import embed_split
from valfusion.engine.io import atomic_write_json
from valfusion.engine.trainer import train
from valfusion.layers import COMPOSERS, CompositeAttention
from valfusion.metrics import recall_at_k
from valfusion.models import VAL
from valfusion.models.val import CompositionOutput

__all__ = ["DEMO_COMPOSERS", "DemoSettings", "format_table", "run_demo"]

#: Composers the demo trains by default: the paper's VAL and every baseline, TIRG both per
#: position (``"tirg"``) and on pooled features as in the papers (``"tirg_pooled"``). The
#: official-release graph (``"val_official"``) is available through ``composers=``.
DEMO_COMPOSERS: tuple[str, ...] = (
    "val", "tirg", "tirg_pooled", "concat", "image_only", "text_only"
)

# One model size for every composer: small enough to train on two CPU cores in minutes.
_MODEL: dict[str, Any] = {
    "backbone": "small",
    "backbone_channels": (32, 64, 128),
    "word_dim": 64,
    "text_hidden_dim": 128,
    "text_dim": 128,
}


@dataclass
class DemoSettings:
    """The demo's budget and benchmark size (identical for every composer).

    Attributes:
        num_train: Training triplets of the synthetic benchmark.
        num_test: Test queries (the gallery holds their references, targets and as many
            distractor renders).
        image_size: Canvas side in pixels.
        steps: Optimiser steps per composer.
        batch_size: Triplets per step.
        lr: Peak AdamW learning rate.
        warmup_steps: Linear warm-up steps.
        evaluations: Test evaluations during training (for the learning curves).
        seed: Seed of the benchmark and of every run.
        model: VALConfig options shared by every composer.
    """

    num_train: int = 3000
    num_test: int = 500
    image_size: int = 64
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    evaluations: int = 4
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: dict(_MODEL))

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smoke run of the whole pipeline (about a minute); its numbers mean little."""
        return cls(num_train=512, num_test=128, steps=30, batch_size=16, warmup_steps=3, evaluations=1)

    def train_config(self, composer: str) -> TrainConfig:
        """The :class:`TrainConfig` of one composer (only ``model["composer"]`` differs)."""
        eval_every = self.steps // self.evaluations if self.evaluations > 1 else 0
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=min(self.warmup_steps, self.steps),
            seed=self.seed,
            eval_every=eval_every,
            log_every=max(1, self.steps // 50),
            model={**self.model, "image_size": self.image_size, "composer": composer},
        )


def _recall(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    return {f"recall@{k}": float(((ranks >= 0) & (ranks < k)).float().mean()) for k in ks}


def _breakdown(ranks: torch.Tensor, groups: Sequence[str], ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(set(groups)):
        mask = torch.tensor([g == name for g in groups])
        out[name] = {"num_queries": int(mask.sum()), **_recall(ranks[mask], ks)}
    return out


@dataclass
class _Analysis:
    ranks: torch.Tensor
    topk: torch.Tensor
    scores: torch.Tensor


def _analyse(model: VAL, split: DataSplit, ks: Sequence[int]) -> _Analysis:
    queries, gallery = embed_split(model, split)
    result = recall_at_k(
        queries, gallery, targets=split.target_indices(), exclude=split.reference_indices(),
        ks=ks, missing="miss",
    )
    assert result.topk_indices is not None
    topk = result.topk_indices[:, :5]
    scores = torch.stack([gallery[row.clamp(min=0)] @ q for q, row in zip(queries, topk)])
    return _Analysis(result.ranks.cpu(), topk.cpu(), scores.cpu())


def _picture_queries(benchmark: SyntheticBenchmark, count: int = 4) -> list[int]:
    """A few test queries, one per edit kind, preferring edits that name a grid cell."""
    edits = benchmark.edits("test")
    chosen: list[int] = []
    for kind in ("recolor", "move", "add", "remove", "reshape"):
        candidates = [i for i, e in enumerate(edits) if e.kind == kind]
        located = [i for i in candidates if edits[i].names_location]
        if (located or candidates) and len(chosen) < count:
            chosen.append((located or candidates)[0])
    return chosen


@torch.no_grad()
def _attention(model: VAL, split: DataSplit, index: int) -> list[torch.Tensor] | None:
    triplet = split.triplets[index]
    assert model.vocabulary is not None
    tokens, lengths = model.vocabulary.encode([triplet.text])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image = split.images(triplet.reference)[None].to(device)
    out = model.compose(image, tokens.to(device), lengths.to(device), return_attention=True)
    model.train(was_training)
    assert isinstance(out, CompositionOutput) and out.attention is not None
    maps = [a.joint_attention[0] for a in out.attention if isinstance(a, CompositeAttention)]
    return maps or None


def _draw(
    out: Path,
    benchmark: SyntheticBenchmark,
    models: dict[str, VAL],
    analyses: dict[str, _Analysis],
    histories: dict[str, Any],
    protocol: str,
) -> dict[str, str]:
    from valfusion.engine.plots import (
        QueryPicture,
        plot_attention_maps,
        plot_learning_curves,
        plot_top_results,
    )

    split = benchmark.test
    pictures = {"learning_curves": str(plot_learning_curves(
        histories, out / "learning_curves.png", recall_key="recall@1", protocol=protocol
    ))}
    chosen = _picture_queries(benchmark)

    def image(image_id: str) -> torch.Tensor:
        return denormalize(split.images(image_id))

    attentive = next((c for c in ("val", "val_official") if c in models), None)
    if attentive is not None:
        queries = [
            QueryPicture(
                reference=image(split.triplets[i].reference),
                text=split.triplets[i].text,
                target=image(split.triplets[i].targets[0]),
                attention=_attention(models[attentive], split, i),
            )
            for i in chosen
        ]
        if all(q.attention is not None for q in queries):
            pictures["attention"] = str(plot_attention_maps(queries, out / "attention_maps.png"))
    shown: list[str] = [c for c in ("val", "tirg") if c in models] or [next(iter(models))]
    rows = []
    targets = split.target_indices()
    for i in chosen:
        for composer in shown:
            analysis = analyses[composer]
            indices = [int(j) for j in analysis.topk[i] if j >= 0]
            rows.append(
                QueryPicture(
                    reference=image(split.triplets[i].reference),
                    text=split.triplets[i].text,
                    attention=_attention(models[composer], split, i),
                    results=[image(split.gallery[j]) for j in indices],
                    correct=[j in targets[i] for j in indices],
                    scores=[float(s) for s in analysis.scores[i][: len(indices)]],
                    label=composer,
                )
            )
    pictures["top_results"] = str(
        plot_top_results(rows, out / "top_results.png", title="Top 5 results (green: correct)")
    )
    return pictures


def _export_queries(out: Path, split: DataSplit, indices: Sequence[int]) -> list[dict[str, str]]:
    """Save a few test queries' reference images as PNG files, to try ``valfusion search`` on."""
    try:
        from PIL import Image
    except ImportError:
        return []
    queries = []
    for n, i in enumerate(indices):
        triplet = split.triplets[i]
        pixels = (denormalize(split.images(triplet.reference)) * 255).round().to(torch.uint8)
        height, width = pixels.shape[1:]
        data = rearrange(pixels, "c h w -> h w c").contiguous().numpy().tobytes()
        path = out / "queries" / f"query_{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (width, height), data).save(path)
        queries.append({"image": str(path), "text": triplet.text, "reference": triplet.reference})
    return queries


def format_table(results: dict[str, Any]) -> str:
    """The demo's Recall@K tables as text: overall, by location in the text, by edit kind.

    Args:
        results: The ``results.json`` content written by :func:`run_demo`.

    Returns:
        The tables, ready to print.
    """
    ks = results["budget"]["ks"]
    composers = results["composers"]
    bench = results["benchmark"]
    budget = results["budget"]
    first = next(iter(composers.values()))
    located = first["by_location"].get("names a cell", {}).get("num_queries", 0)
    unlocated = first["by_location"].get("no cell", {}).get("num_queries", 0)
    width = max(len("composer"), *(len(c) for c in composers)) + 2
    lines = [
        f"Recall@K (%) on the synthetic benchmark, protocol {results['protocol']!r}: "
        f"{bench['num_queries']} queries, gallery of {bench['gallery_size']} images, "
        "each query's reference excluded.",
        f"Same budget for every composer: {budget['steps']} steps x {budget['batch_size']} "
        f"triplets, AdamW lr {budget['lr']:g}, warm-up + cosine, seed {budget['seed']}.",
        f"'cell': the edit text names a grid cell ({located} queries); 'no cell': it does not "
        f"({unlocated} queries).",
        "",
    ]
    groups = [("names a cell", "cell"), ("no cell", "no cell")]
    header = [f"R@{k}" for k in ks] + [f"R@{k} {short}" for _, short in groups for k in ks[:2]]
    lines.append("composer".ljust(width) + "".join(h.rjust(max(7, len(h) + 2)) for h in header))
    for name, entry in composers.items():
        values = [entry[f"recall@{k}"] for k in ks]
        values += [entry["by_location"].get(g, {}).get(f"recall@{k}") for g, _ in groups for k in ks[:2]]
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in values]
        lines.append(name.ljust(width) + "".join(c.rjust(max(7, len(h) + 2)) for c, h in zip(cells, header)))
    kinds = sorted(first["by_edit_kind"])
    if kinds:
        lines += ["", f"R@{ks[0]} / R@{ks[1]} (%) by edit kind (queries per kind in brackets):"]
        header = [f"{k} ({first['by_edit_kind'][k]['num_queries']})" for k in kinds]
        sizes = [max(len(h) + 2, 13) for h in header]
        lines.append("composer".ljust(width) + "".join(h.rjust(n) for h, n in zip(header, sizes)))
        for name, entry in composers.items():
            cells = [
                "{:.1f} / {:.1f}".format(
                    100 * entry["by_edit_kind"][k][f"recall@{ks[0]}"], 100 * entry["by_edit_kind"][k][f"recall@{ks[1]}"]
                ).rjust(n)
                for k, n in zip(kinds, sizes)
            ]
            lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    steps: int | None = None,
    composers: Sequence[str] | None = None,
    seed: int = 0,
    settings: DemoSettings | None = None,
    pictures: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every composer on the synthetic benchmark with one budget and compare them.

    Writes ``OUT/results.json`` (every number below, the budget and the benchmark),
    ``OUT/runs/<composer>/`` (a run directory per composer, usable with
    ``valfusion search`` / ``evaluate``), ``OUT/queries/query_N.png`` (a few test
    queries' reference images, with their texts in ``results.json``) and, with
    matplotlib, ``OUT/learning_curves.png``, ``OUT/attention_maps.png`` and
    ``OUT/top_results.png``.

    Args:
        out: Output folder.
        quick: Use :meth:`DemoSettings.quick` (a smoke run of the pipeline).
        steps: Override the steps per composer.
        composers: Which composers (default :data:`DEMO_COMPOSERS`).
        seed: Seed of the benchmark and of every run.
        settings: Full settings (overrides ``quick``; ``steps`` and ``seed`` still apply).
        pictures: Draw the pictures (needs matplotlib).
        progress: As for :class:`~valfusion.engine.Trainer`.
        log: Where progress messages go (default: print to stderr).

    Returns:
        The ``results.json`` content.

    Raises:
        ValueError: An unknown composer or a bad setting.
    """
    started = time.perf_counter()
    log = log if log is not None else (lambda message: print(message, file=sys.stderr, flush=True))
    settings = settings if settings is not None else (DemoSettings.quick() if quick else DemoSettings())
    settings = replace(settings, seed=seed, steps=settings.steps if steps is None else steps)
    composers = tuple(DEMO_COMPOSERS if composers is None else composers)
    unknown = [c for c in composers if c not in COMPOSERS]
    if unknown or not composers:
        raise ValueError(f"composers: expected names from {COMPOSERS}, got {list(composers)}")
    configs = {c: settings.train_config(c) for c in composers}  # validates before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    benchmark = SyntheticBenchmark(
        settings.num_train, settings.num_test, seed=seed, image_size=settings.image_size
    )
    data = benchmark.data()
    split = benchmark.test
    edits = benchmark.edits("test")
    log(
        f"valfusion demo: synthetic benchmark, {settings.num_train} training triplets, "
        f"{len(split)} test queries, gallery {len(split.gallery)} images; composers: {', '.join(composers)}"
    )
    ks = (1, 10, 50)
    entries: dict[str, Any] = {}
    models: dict[str, VAL] = {}
    analyses: dict[str, _Analysis] = {}
    histories: dict[str, Any] = {}
    for composer in composers:
        run_dir = out / "runs" / composer
        result = train(data, configs[composer], run_dir, progress=progress)
        assert result.metrics is not None
        analysis = _analyse(result.model, split, ks)
        models[composer], analyses[composer], histories[composer] = result.model, analysis, result.history
        location = ["names a cell" if e.names_location else "no cell" for e in edits]
        entries[composer] = {
            **{f"recall@{k}": result.metrics[f"recall@{k}"] for k in ks},
            "by_edit_kind": _breakdown(analysis.ranks, [e.kind for e in edits], ks),
            "by_location": _breakdown(analysis.ranks, location, ks),
            "final_loss": result.history["train"][-1]["loss"],
            "train_seconds": round(result.seconds, 1),
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "run_dir": str(run_dir),
        }
        shown = "  ".join(f"R@{k} {100 * entries[composer][f'recall@{k}']:.1f}" for k in ks)
        log(f"  {composer}: {shown}  ({result.seconds:.0f} s)")

    results: dict[str, Any] = {
        "valfusion_version": __version__,
        "protocol": data.protocol,
        "benchmark": {
            **data.metadata(),
            "num_train": settings.num_train,
            "num_queries": len(split),
            "gallery_size": len(split.gallery),
        },
        "budget": {**asdict(replace(settings, model={})), "ks": list(ks), "model": {
            k: list(v) if isinstance(v, tuple) else v for k, v in settings.model.items()
        }},
        "composers": entries,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    if pictures:
        try:
            results["pictures"] = _draw(out, benchmark, models, analyses, histories, data.protocol)
        except ImportError as err:
            log(f"valfusion demo: pictures skipped ({err})")
    results["queries"] = _export_queries(out, split, _picture_queries(benchmark))
    results["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "results.json", results)
    return results
