"""The main job: VAL and its baselines on the built-in synthetic benchmark, one Recall@K table.

Every composer is trained with the same budget (steps, batch, learning rate, schedule,
seed, model size) on the same data; the table reports Recall@K under the benchmark's
protocol, overall, per edit kind, and split by whether the edit text names a grid cell
(the case spatial attention is meant for). Pictures show the learning curves, the
joint-attention maps of a few queries and their top results.

With several seeds every composer is trained once per seed. Seed ``s`` draws both the
benchmark and the runs, so seed ``s`` of a multi-seed demo is the one-seed demo with
``seed=s``. Every figure is then reported over the ``n`` seeds as its mean
``m = (1/n) sum_s x_s``, its sample standard deviation
``sqrt(sum_s (x_s - m)^2 / (n - 1))`` and its range ``[min_s x_s, max_s x_s]``, and VAL's
lead over each composer is the per-seed difference of their recalls (paired by seed),
summarised the same way.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from valfusion._version import __version__
from valfusion.data.images import denormalize
from valfusion.data.split import DataSplit
from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.engine.checkpoint import checkpoint_path
from valfusion.engine.config import TrainConfig
from valfusion.engine.evaluation import embed_split
from valfusion.engine.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from valfusion.engine.trainer import CHECKPOINT_DIR, train
from valfusion.layers import COMPOSERS, CompositeAttention
from valfusion.metrics import recall_at_k
from valfusion.models import VAL
from valfusion.models.val import CompositionOutput

__all__ = [
    "DEMO_COMPOSERS",
    "RANKING_COLUMNS",
    "DemoSettings",
    "format_markdown",
    "format_table",
    "run_demo",
]

logger = logging.getLogger(__name__)

#: Composers the demo trains by default: the paper's VAL and every baseline, TIRG both per
#: position (``"tirg"``) and on pooled features as in the papers (``"tirg_pooled"``). The
#: official-release graph (``"val_official"``) is available through ``composers=``.
DEMO_COMPOSERS: tuple[str, ...] = (
    "val", "tirg", "tirg_pooled", "concat", "image_only", "text_only"
)

_KS = (1, 10, 50)
_TOP = 10  # gallery ids per query in the ranking files
_SHOWN = 5  # results per query in the top-results picture
_LOCATIONS = (("names a cell", "cell"), ("no cell", "no cell"))

#: Columns of ``OUT/rankings/<composer>.csv``, one row per (seed, test query): the seed,
#: the query's position in the test split, its reference id and text, its edit kind,
#: whether the text names a grid cell (1/0), its correct target ids (space-separated),
#: the 1-based rank of its best-ranked correct target (reference excluded; empty when no
#: correct target is left) and the ids of its top 10 gallery images, best first.
RANKING_COLUMNS: tuple[str, ...] = (
    "seed", "query", "reference", "text", "edit_kind", "names_cell", "targets", "rank", f"top{_TOP}",
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
    """One trained composer's test rankings.

    Attributes:
        ranks: ``(Q,)`` 0-based rank of each query's best-ranked correct target (``-1``: none).
        topk: ``(Q, 10)`` gallery indices of each query's top results, best first.
        scores: ``(Q, 5)`` cosine scores of the first five of them.
        best_target: ``(Q,)`` gallery index of each query's best-ranked correct target (``-1``: none).
    """

    ranks: torch.Tensor
    topk: torch.Tensor
    scores: torch.Tensor
    best_target: torch.Tensor


def _analyse(model: VAL, split: DataSplit, ks: Sequence[int]) -> _Analysis:
    queries, gallery = embed_split(model, split)
    targets, references = split.target_indices(), split.reference_indices()
    result = recall_at_k(queries, gallery, targets=targets, exclude=references, ks=ks, missing="miss")
    assert result.topk_indices is not None
    topk = result.topk_indices[:, :_TOP]
    scores = torch.stack([gallery[row.clamp(min=0)] @ q for q, row in zip(queries, topk[:, :_SHOWN])])
    best = []
    for q, correct, reference in zip(queries, targets, references):
        allowed = sorted(t for t in correct if t != reference)  # ties go to the lower index
        best.append(allowed[int(torch.argmax(gallery[allowed] @ q))] if allowed else -1)
    return _Analysis(result.ranks.cpu(), topk.cpu(), scores.cpu(), torch.tensor(best))


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
    tokens, lengths = model.tokenize([triplet.text])
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
    rows = [_top_results_row(split, analyses[c], i, models[c], c) for i in chosen for c in shown]
    pictures["top_results"] = str(plot_top_results(
        rows, out / "top_results.png",
        title=f"Top {_SHOWN} results (green: correct) and the best-ranked correct target with its rank",
    ))
    return pictures


def _top_results_row(split: DataSplit, analysis: _Analysis, index: int, model: VAL, label: str) -> Any:
    """Query ``index`` with its top results and its best-ranked correct target and rank."""
    from valfusion.engine.plots import QueryPicture

    def image(image_id: str) -> torch.Tensor:
        return denormalize(split.images(image_id))

    triplet = split.triplets[index]
    correct = set(split.target_indices()[index])
    indices = [int(j) for j in analysis.topk[index, :_SHOWN] if j >= 0]
    best, rank = int(analysis.best_target[index]), int(analysis.ranks[index])
    return QueryPicture(
        reference=image(triplet.reference),
        text=triplet.text,
        target=image(split.gallery[best]) if best >= 0 else None,
        target_rank=rank + 1 if rank >= 0 else None,
        attention=_attention(model, split, index),
        results=[image(split.gallery[j]) for j in indices],
        correct=[j in correct for j in indices],
        scores=[float(s) for s in analysis.scores[index][: len(indices)]],
        label=label,
    )


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
        encoded = io.BytesIO()
        Image.frombytes("RGB", (width, height), data).save(encoded, format="PNG")
        atomic_write_bytes(path, encoded.getvalue())
        queries.append({"image": str(path), "text": triplet.text, "reference": triplet.reference})
    return queries


def _ranking_rows(seed: int, split: DataSplit, kinds: Sequence[str], located: Sequence[bool], analysis: _Analysis) -> list[dict[str, Any]]:
    """One :data:`RANKING_COLUMNS` row per test query."""
    rows = []
    for i, triplet in enumerate(split.triplets):
        rank = int(analysis.ranks[i])
        rows.append({
            "seed": seed,
            "query": i,
            "reference": triplet.reference,
            "text": triplet.text,
            "edit_kind": kinds[i],
            "names_cell": int(located[i]),
            "targets": " ".join(triplet.targets),
            "rank": rank + 1 if rank >= 0 else "",
            f"top{_TOP}": " ".join(split.gallery[j] for j in analysis.topk[i].tolist() if j >= 0),
        })
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def _drop_final_checkpoint(run_dir: Path, step: int) -> None:
    """Remove a finished run's end-of-training checkpoint: it holds the weights of ``model.safetensors``.

    The demo's runs are finished (there is nothing to resume), so the checkpoint would only
    duplicate the saved model (plus optimiser state). The trainer always writes it, so the
    demo removes it, and the folder when nothing else is in it.
    """
    folder = run_dir / CHECKPOINT_DIR
    checkpoint_path(folder, step).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


# ---------------------------------------------------------------------------- over seeds


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "min", "max", "values"}`` of per-seed values (``std``: sample
    standard deviation, ``None`` for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": list(values)}


def _aggregate(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every number of the per-seed entries as its :func:`_spread` over seeds.

    Nested dicts are aggregated key by key (a group missing from a seed, e.g. an edit kind
    without queries, is aggregated over the seeds that have it); strings are dropped.
    """
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for entry in entries for k in entry):
        present = [entry[key] for entry in entries if key in entry]
        if all(isinstance(v, Mapping) for v in present):
            out[key] = _aggregate(present)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            out[key] = _spread(present)
    return out


def _lead(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a``'s recall minus ``b``'s, for every ``recall@K`` the two entries share (groups too)."""
    out: dict[str, Any] = {}
    for key, value in a.items():
        if key not in b:
            continue
        if isinstance(value, Mapping):
            inner = _lead(value, b[key])
            if inner:
                out[key] = inner
        elif key.startswith("recall@"):
            out[key] = value - b[key]
    return out


# ---------------------------------------------------------------------------- tables


@dataclass
class _Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def _lookup(entry: Any, path: Sequence[str]) -> Any:
    for key in path:
        entry = entry.get(key) if isinstance(entry, Mapping) else None
    return entry


def _cell(stats: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``62.4`` for one seed; ``62.4 ± 1.2 [60.8, 63.5]`` (percent: mean ± std [min, max]) for several."""
    if stats is None:
        return "-"
    mean = f"{100 * stats['mean']:+.1f}" if signed else f"{100 * stats['mean']:.1f}"
    if stats["std"] is None:
        return mean
    return f"{mean} ± {100 * stats['std']:.1f} [{100 * stats['min']:.1f}, {100 * stats['max']:.1f}]"


def _count(stats: Mapping[str, Any] | None) -> str:
    if stats is None:
        return "0"
    low, high = int(stats["min"]), int(stats["max"])
    return str(low) if low == high else f"{low}-{high}"


def _columns(ks: Sequence[int]) -> list[tuple[str, tuple[str, ...]]]:
    """``(header, path into an entry)`` of the main table's columns."""
    columns: list[tuple[str, tuple[str, ...]]] = [(f"R@{k}", (f"recall@{k}",)) for k in ks]
    columns += [
        (f"R@{k} {short}", ("by_location", group, f"recall@{k}")) for group, short in _LOCATIONS for k in ks[:2]
    ]
    return columns


def _report(results: Mapping[str, Any], *, timing: bool = False) -> tuple[list[str], list[_Table]]:
    """The tables' introduction and the tables, shared by the text and the Markdown form."""
    ks = results["budget"]["ks"]
    seeds = results["seeds"]
    composers = results["composers"]
    bench = results["benchmark"]
    budget = results["budget"]
    several = len(seeds) > 1
    first = next(iter(composers.values()))
    located = _count(_lookup(first, ("by_location", "names a cell", "num_queries")))
    unlocated = _count(_lookup(first, ("by_location", "no cell", "num_queries")))
    per_seed = " per seed" if several else ""
    seed_text = (
        f"seeds {', '.join(map(str, seeds))} (each draws the benchmark and the runs)" if several else f"seed {seeds[0]}"
    )
    intro = [
        f"Recall@K (%) on the synthetic benchmark, protocol {results['protocol']!r}: "
        f"{bench['num_queries']} queries, gallery of {bench['gallery_size']} images, "
        "each query's reference excluded.",
        f"Same budget for every composer: {budget['steps']} steps x {budget['batch_size']} "
        f"triplets, AdamW lr {budget['lr']:g}, warm-up + cosine, {seed_text}.",
    ]
    if several:
        intro.append(f"Each figure: mean ± sample standard deviation [min, max] over the {len(seeds)} seeds.")
    intro.append(
        f"'cell': the edit text names a grid cell ({located} queries{per_seed}); 'no cell': it does not "
        f"({unlocated} queries{per_seed})."
    )
    columns = _columns(ks)
    main = _Table("", ["composer", *(h for h, _ in columns)], [])
    for name, entry in composers.items():
        main.rows.append([name, *(_cell(_lookup(entry, path)) for _, path in columns)])
        if timing:
            main.rows[-1].append(f"{entry['train_seconds']['mean']:.0f}")
    if timing:
        main.header.append("train s")
    tables = [main]
    if several:
        tables.append(_Table(
            f"R@{ks[0]} (%) in each seed:",
            ["composer", *(f"seed {s}" for s in seeds)],
            [[name, *(f"{100 * v:.1f}" for v in entry[f"recall@{ks[0]}"]["values"])] for name, entry in composers.items()],
        ))
    leads = results.get("leads")
    if several and leads:
        reference = leads["reference"]
        tables.append(_Table(
            f"{reference}'s lead over each composer in points: its recall minus the composer's in the "
            "same seed, mean ± std [min, max] over seeds:",
            [f"{reference} minus", *(h for h, _ in columns)],
            [[name, *(_cell(_lookup(lead, path), signed=True) for _, path in columns)]
             for name, lead in leads["over"].items()],
        ))
    kinds = list(first["by_edit_kind"])
    if kinds:
        header = [f"{k} ({_count(first['by_edit_kind'][k]['num_queries'])})" for k in kinds]
        if several:
            for k in ks[:2]:
                tables.append(_Table(
                    f"R@{k} (%) by edit kind (queries per kind and seed in brackets):",
                    ["composer", *header],
                    [[name, *(_cell(_lookup(entry, ("by_edit_kind", kind, f"recall@{k}"))) for kind in kinds)]
                     for name, entry in composers.items()],
                ))
        else:
            tables.append(_Table(
                f"R@{ks[0]} / R@{ks[1]} (%) by edit kind (queries per kind in brackets):",
                ["composer", *header],
                [[name, *(
                    f"{_cell(_lookup(entry, ('by_edit_kind', kind, f'recall@{ks[0]}')))} / "
                    f"{_cell(_lookup(entry, ('by_edit_kind', kind, f'recall@{ks[1]}')))}"
                    for kind in kinds
                )] for name, entry in composers.items()],
            ))
    return intro, tables


def _text_table(table: _Table) -> list[str]:
    widths = [max(len(row[i]) for row in (table.header, *table.rows)) for i in range(len(table.header))]
    first = widths[0] + 2
    sizes = [max(7, w + 2) for w in widths[1:]]

    def line(row: Sequence[str]) -> str:
        return row[0].ljust(first) + "".join(cell.rjust(n) for cell, n in zip(row[1:], sizes))

    return [*([table.title] if table.title else []), line(table.header), *(line(row) for row in table.rows)]


def _markdown_table(table: _Table) -> list[str]:
    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(row) + " |"

    return [
        *([table.title, ""] if table.title else []),
        line(table.header),
        line(["---"] * len(table.header)),
        *(line(row) for row in table.rows),
    ]


def format_table(results: Mapping[str, Any]) -> str:
    """The demo's Recall@K tables as text: overall, VAL's lead (several seeds), by edit kind.

    With one seed each cell is a recall in percent; with several it is
    ``mean ± std [min, max]`` over the seeds (sample standard deviation).

    Args:
        results: The ``results.json`` content written by :func:`run_demo`.

    Returns:
        The tables, ready to print.
    """
    intro, tables = _report(results)
    lines = [*intro]
    for table in tables:
        lines += ["", *_text_table(table)]
    return "\n".join(lines)


def format_markdown(results: Mapping[str, Any]) -> str:
    """The tables of :func:`format_table` as Markdown (``OUT/results.md``), with training seconds.

    Args:
        results: The ``results.json`` content written by :func:`run_demo`.

    Returns:
        Markdown text: the introduction as paragraphs, then one table per section.
    """
    intro, tables = _report(results, timing=True)
    lines = [" ".join(intro)]
    for table in tables:
        lines += ["", *_markdown_table(table)]
    return "\n".join(lines) + "\n"


def _table_rows(results: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of ``OUT/results.csv``: one row per composer and query subset."""
    ks = results["budget"]["ks"]
    stats = ("mean", "std", "min", "max")
    columns = ["composer", "subset", "seeds", "num_queries", *(f"recall@{k}_{s}" for k in ks for s in stats)]
    rows = []
    everything = _spread([results["benchmark"]["num_queries"]] * len(results["seeds"]))
    for name, entry in results["composers"].items():
        subsets = [("all", {**entry, "num_queries": everything})]
        subsets += list(entry["by_location"].items()) + list(entry["by_edit_kind"].items())
        for subset, values in subsets:
            row: dict[str, Any] = {
                "composer": name,
                "subset": subset,
                "seeds": len(values[f"recall@{ks[0]}"]["values"]),
                "num_queries": values["num_queries"]["mean"],
            }
            for k in ks:
                for s in stats:
                    value = values[f"recall@{k}"][s]
                    row[f"recall@{k}_{s}"] = "" if value is None else value
            rows.append(row)
    return columns, rows


# ---------------------------------------------------------------------------- the job


def _seed_list(seed: int | Sequence[int]) -> tuple[int, ...]:
    seeds = (seed,) if isinstance(seed, int) and not isinstance(seed, bool) else tuple(seed)  # type: ignore[arg-type]
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"seed: expected an integer or a non-empty sequence of distinct integers, got {seed!r}")
    return seeds


def run_demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    steps: int | None = None,
    composers: Sequence[str] | None = None,
    seed: int | Sequence[int] = 0,
    settings: DemoSettings | None = None,
    pictures: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every composer on the synthetic benchmark with one budget and compare them.

    Writes into ``out``:

    - ``results.json``: every number below, the budget and the benchmark. ``composers``
      holds, per composer, every figure as ``{"mean", "std", "min", "max", "values"}``
      over the seeds (``std`` is the sample standard deviation, ``None`` for one seed;
      ``values`` in seed order); ``leads`` the same for the reference composer's (VAL's)
      recall minus each other composer's, paired by seed; ``runs`` the per-seed figures.
    - ``results.md`` and ``results.csv``: the tables (Markdown, percent) and one CSV row
      per composer and query subset (all, by location, by edit kind; fractions).
    - ``rankings/<composer>.csv``: one row per seed and test query, columns
      :data:`RANKING_COLUMNS`.
    - ``runs/<composer>/`` (one seed) or ``runs/seed_<S>/<composer>/``: a run directory
      per composer and seed, usable with ``valfusion search`` / ``evaluate`` (the model,
      its metrics and history; the final checkpoint, a copy of the model's weights, is
      removed).
    - ``queries/query_N.png``: a few test queries' reference images (texts in
      ``results.json``) and, with matplotlib, ``learning_curves.png``,
      ``attention_maps.png`` and ``top_results.png`` (each query's top five results and
      its best-ranked correct target with its rank); queries and pictures come from the
      first seed.

    Args:
        out: Output folder.
        quick: Use :meth:`DemoSettings.quick` (a smoke run of the pipeline).
        steps: Override the steps per composer.
        composers: Which composers (default :data:`DEMO_COMPOSERS`).
        seed: Seed of the benchmark and of every run, or several distinct seeds: every
            composer is then trained once per seed.
        settings: Full settings (overrides ``quick``; ``steps`` and ``seed`` still apply).
        pictures: Draw the pictures (needs matplotlib).
        progress: As for :class:`~valfusion.engine.Trainer`.
        log: Where progress messages go (default: ``info`` records of the
            ``valfusion.engine.demo`` logger, which ``valfusion demo`` shows on stderr).

    Returns:
        The ``results.json`` content.

    Raises:
        ValueError: An unknown composer, a bad seed or a bad setting.
    """
    started = time.perf_counter()
    log = log if log is not None else logger.info
    seeds = _seed_list(seed)
    settings = settings if settings is not None else (DemoSettings.quick() if quick else DemoSettings())
    settings = replace(settings, seed=seeds[0], steps=settings.steps if steps is None else steps)
    composers = tuple(DEMO_COMPOSERS if composers is None else composers)
    unknown = [c for c in composers if c not in COMPOSERS]
    if unknown or not composers:
        raise ValueError(f"composers: expected names from {COMPOSERS}, got {list(composers)}")
    # Every configuration is built (and validated) before any work.
    configs = {s: {c: replace(settings, seed=s).train_config(c) for c in composers} for s in seeds}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, Any]] = []
    rankings: dict[str, list[dict[str, Any]]] = {c: [] for c in composers}
    first: dict[str, Any] = {}
    for n, s in enumerate(seeds):
        benchmark = SyntheticBenchmark(settings.num_train, settings.num_test, seed=s, image_size=settings.image_size)
        data = benchmark.data()
        split = benchmark.test
        edits = benchmark.edits("test")
        kinds = [e.kind for e in edits]
        located = [e.names_location for e in edits]
        location = ["names a cell" if flag else "no cell" for flag in located]
        seed_label = f"seed {s}" + (f" ({n + 1} of {len(seeds)})" if len(seeds) > 1 else "")
        log(
            f"valfusion demo, {seed_label}: synthetic benchmark, {settings.num_train} training triplets, "
            f"{len(split)} test queries, gallery {len(split.gallery)} images; composers: {', '.join(composers)}"
        )
        runs_dir = out / "runs" if len(seeds) == 1 else out / "runs" / f"seed_{s}"
        entries: dict[str, Any] = {}
        models: dict[str, VAL] = {}
        analyses: dict[str, _Analysis] = {}
        histories: dict[str, Any] = {}
        for composer in composers:
            run_dir = runs_dir / composer
            result = train(data, configs[s][composer], run_dir, progress=progress)
            assert result.metrics is not None
            _drop_final_checkpoint(run_dir, result.step)
            analysis = _analyse(result.model, split, _KS)
            models[composer], analyses[composer], histories[composer] = result.model, analysis, result.history
            entries[composer] = {
                **{f"recall@{k}": result.metrics[f"recall@{k}"] for k in _KS},
                "by_edit_kind": _breakdown(analysis.ranks, kinds, _KS),
                "by_location": _breakdown(analysis.ranks, location, _KS),
                "final_loss": result.history["train"][-1]["loss"],
                "train_seconds": round(result.seconds, 1),
                "parameters": sum(p.numel() for p in result.model.parameters()),
                "run_dir": str(run_dir),
            }
            rankings[composer] += _ranking_rows(s, split, kinds, located, analysis)
            shown = "  ".join(f"R@{k} {100 * entries[composer][f'recall@{k}']:.1f}" for k in _KS)
            log(f"  {composer}: {shown}  ({result.seconds:.0f} s)")
        runs.append({"seed": s, "composers": entries})
        if n == 0:
            first["benchmark"] = {
                **data.metadata(),
                "num_train": settings.num_train,
                "num_queries": len(split),
                "gallery_size": len(split.gallery),
            }
            first["protocol"] = data.protocol
            if pictures:
                try:
                    first["pictures"] = _draw(out, benchmark, models, analyses, histories, data.protocol)
                except ImportError as err:
                    log(f"valfusion demo: pictures skipped ({err})")
            first["queries"] = _export_queries(out, split, _picture_queries(benchmark))

    summary = {c: _aggregate([run["composers"][c] for run in runs]) for c in composers}
    reference = next((c for c in ("val", "val_official") if c in composers), None)
    results: dict[str, Any] = {
        "valfusion_version": __version__,
        "protocol": first["protocol"],
        "seeds": list(seeds),
        "benchmark": first["benchmark"],
        "budget": {
            **{k: v for k, v in asdict(replace(settings, model={})).items() if k != "seed"},
            "seeds": list(seeds),
            "ks": list(_KS),
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.model.items()},
        },
        "composers": summary,
        "runs": runs,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    if reference is not None and len(composers) > 1:
        results["leads"] = {"reference": reference, "over": {
            c: _aggregate([_lead(run["composers"][reference], run["composers"][c]) for run in runs])
            for c in composers if c != reference
        }}
    files = {
        "table_markdown": str(atomic_write_text(out / "results.md", format_markdown(results))),
        "table_csv": str(_write_csv(out / "results.csv", *_table_rows(results))),
        "rankings": {c: str(_write_csv(out / "rankings" / f"{c}.csv", RANKING_COLUMNS, rows)) for c, rows in rankings.items()},
    }
    results["files"] = files
    if "pictures" in first:
        results["pictures"] = first["pictures"]
    results["queries"] = first["queries"]
    results["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "results.json", results)
    return results
