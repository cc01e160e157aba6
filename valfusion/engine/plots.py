"""Pictures of a run: learning curves, joint-attention maps, top results of queries.

matplotlib (the ``demo`` extra) is imported inside each function and only its
object-oriented API is used (``Figure`` + the Agg canvas), so drawing never changes the
caller's pyplot backend or global state. Every picture is written atomically.

Query texts are drawn literally: ``$`` does not start matplotlib's math mode (a text like
``"$\\frac$"`` would otherwise fail to draw), and characters that cannot be drawn (lone
surrogates, what undecodable bytes become) are drawn as U+FFFD. Characters the font has
no glyph for are reported in one warning per picture instead of one per character.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from valfusion.engine.io import atomic_write_bytes

__all__ = [
    "QueryPicture",
    "check_picture_path",
    "plot_attention_maps",
    "plot_learning_curves",
    "plot_top_results",
    "require_matplotlib",
    "spatial_attention",
]


def require_matplotlib() -> Any:
    """Import matplotlib's ``Figure`` class, or explain which extra provides it.

    Returns:
        ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('pictures need matplotlib: pip install "valfusion[demo]"') from err
    return Figure


# matplotlib warns once per character: "Glyph 32418 (...) missing from font(s) DejaVu Sans."
_MISSING_GLYPH = re.compile(r"^Glyph (\d+) .*missing from font")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_picture_path(path: str | os.PathLike[str], name: str = "path") -> str:
    """Require a path a picture can be written to, before any drawing is done.

    Args:
        path: The picture file; its suffix picks the format (none: PNG).
        name: The argument's name for the messages (e.g. ``"--picture"``).

    Returns:
        The format (``"png"``, ``"pdf"``, ``"svg"``...).

    Raises:
        ValueError: Naming ``name``, if the path is a folder, lies under a file, or has a
            suffix matplotlib cannot write (checked when matplotlib is installed).
    """
    picture = Path(path)
    if picture.is_dir():
        raise ValueError(
            f"{name}: {picture} is a folder; expected a picture file such as {picture / 'search.png'}"
        )
    folder = next(p for p in picture.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ValueError(f"{name}: {folder} is a file, not a folder, so {picture} cannot be written")
    picture_format = picture.suffix.lstrip(".").lower() or "png"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return picture_format
    supported = sorted(FigureCanvasAgg.get_supported_filetypes())
    if picture_format not in supported:
        raise ValueError(
            f"{name}: {picture} has the suffix .{picture_format}; expected a picture format, "
            f"one of {', '.join('.' + s for s in supported)}"
        )
    return picture_format


def _text(text: str) -> str:
    """A user's text in a form the font machinery accepts (lone surrogates -> U+FFFD)."""
    return _SURROGATE.sub("\N{REPLACEMENT CHARACTER}", text)


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    picture_format = check_picture_path(path)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format=picture_format, dpi=110)
    missing: list[str] = []
    for warning in caught:
        found = _MISSING_GLYPH.match(str(warning.message))
        if found is None:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        elif chr(int(found.group(1))) not in missing:
            missing.append(chr(int(found.group(1))))
    if missing:
        warnings.warn(
            f"picture {path}: the font has no glyph for {', '.join(map(repr, missing))}; "
            "they are drawn as empty boxes",
            UserWarning,
            stacklevel=3,
        )
    return atomic_write_bytes(path, buffer.getvalue())


def _as_pixels(image: Tensor) -> Any:
    """``(3, H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` numpy array for ``imshow``."""
    return rearrange(image.detach().float().cpu().clamp(0, 1), "c h w -> h w c").numpy()


def spatial_attention(joint_attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Where a composite transformer keeps the reference: the joint attention, averaged over channels.

    ``A(h, w) = mean_c joint_attention[c, h, w]``, upsampled (bilinear) to the image size.

    Args:
        joint_attention: ``(C, h, w)`` joint attention of one query at one level.
        size: ``(H, W)`` of the image it is drawn over.

    Returns:
        ``(H, W)`` map.
    """
    mean = reduce(joint_attention.detach().float(), "c h w -> 1 1 h w", "mean")
    return F.interpolate(mean, size=size, mode="bilinear", align_corners=False)[0, 0].cpu()


def plot_learning_curves(
    histories: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    path: str | os.PathLike[str],
    *,
    recall_key: str = "recall@10",
    protocol: str = "",
) -> Path:
    """Training loss and evaluation recall against steps, one line per run.

    Args:
        histories: ``{run name: {"train": [{"step", "loss"}, ...], "eval": [{"step",
            recall_key}, ...]}}`` (:attr:`~valfusion.engine.TrainResult.history`).
        path: The picture file (``.png``, ``.pdf``, ``.svg``).
        recall_key: Which recall to plot.
        protocol: Protocol name for the axis label.

    Returns:
        The path written.
    """
    figure = require_matplotlib()(figsize=(11, 4), layout="constrained")
    loss_axis, recall_axis = figure.subplots(1, 2)
    for name, history in histories.items():
        train = history.get("train", [])
        evals = history.get("eval", [])
        loss_axis.plot([e["step"] for e in train], [e["loss"] for e in train], label=name)
        recall_axis.plot(
            [e["step"] for e in evals], [100 * e[recall_key] for e in evals], marker="o", label=name
        )
    loss_axis.set(xlabel="step", ylabel="training loss", title="Training loss")
    recall_axis.set(
        xlabel="step",
        ylabel=f"{recall_key.replace('recall@', 'Recall@')} (%)",
        title=f"Test recall ({protocol} protocol)" if protocol else "Test recall",
    )
    for axis in (loss_axis, recall_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(figure, path)


@dataclass
class QueryPicture:
    """One query to draw.

    Attributes:
        reference: ``(3, H, W)`` reference image in ``[0, 1]``.
        text: The modification text.
        target: ``(3, H, W)`` a correct target in ``[0, 1]``, or ``None``.
        target_rank: 1-based rank of ``target`` in the query's ranking (the best-ranked
            correct target), or ``None`` when unknown.
        attention: One ``(C_l, h_l, w_l)`` joint-attention map per level (``None`` for a
            composer without attention).
        results: ``(3, H, W)`` images of the top results in ``[0, 1]``, best first.
        correct: Whether each result is a correct target.
        scores: Cosine score of each result.
        label: A caption for the row (e.g. the composer).
    """

    reference: Tensor
    text: str
    target: Tensor | None = None
    target_rank: int | None = None
    attention: Sequence[Tensor] | None = None
    results: Sequence[Tensor] = ()
    correct: Sequence[bool] = ()
    scores: Sequence[float] = ()
    label: str = ""


def _blank(axis: Any) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = _text(text).split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def plot_attention_maps(queries: Sequence[QueryPicture], path: str | os.PathLike[str]) -> Path:
    """Reference image, target and the joint attention of every level over the reference.

    One row per query; the attention panels show :func:`spatial_attention` of each level
    (bright: the reference features the composer preserves; dark: what the text asks to
    change).

    Args:
        queries: The queries, each with ``attention`` set.
        path: The picture file.

    Returns:
        The path written.

    Raises:
        ValueError: If a query has no attention maps.
    """
    if not queries:
        raise ValueError("queries: expected at least one query to draw")
    if any(q.attention is None for q in queries):
        raise ValueError("queries: every query needs attention maps (a composer with attention)")
    levels = len(queries[0].attention or ())
    columns = 2 + levels
    figure = require_matplotlib()(figsize=(2.2 * columns, 2.5 * len(queries)), layout="constrained")
    axes = figure.subplots(len(queries), columns, squeeze=False)
    for row, query in enumerate(queries):
        size = (query.reference.shape[1], query.reference.shape[2])  # reference: (3, H, W)
        axes[row][0].imshow(_as_pixels(query.reference))
        axes[row][0].set_title(_wrap(query.text), fontsize=7, parse_math=False)
        if query.target is not None:
            axes[row][1].imshow(_as_pixels(query.target))
        axes[row][1].set_title("a correct target", fontsize=7)
        for level, attention in enumerate(query.attention or ()):
            axis = axes[row][2 + level]
            axis.imshow(_as_pixels(query.reference))
            heat = spatial_attention(attention, size)
            axis.imshow(heat.numpy(), cmap="magma", alpha=0.6)
            axis.set_title(f"joint attention, level {level + 1}\n({attention.shape[-2]}x{attention.shape[-1]})", fontsize=7)
        for axis in axes[row]:
            _blank(axis)
    return _save(figure, path)


def plot_top_results(
    queries: Sequence[QueryPicture], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Each query (reference + text, its attention when given) next to its top results.

    Correct results get a green frame, others a red one; the cosine score is under each.
    A query with a ``target`` gets a last panel with it and its ``target_rank``, framed
    green when the target is among the results shown and red when it ranks below them, so
    a miss shows where the correct image went.

    Args:
        queries: The queries, each with ``results`` (and ``correct``, ``scores``).
        path: The picture file.
        title: A title over the figure.

    Returns:
        The path written.

    Raises:
        ValueError: If there is no query, or ``path`` cannot hold a picture (see
            :func:`check_picture_path`).
    """
    check_picture_path(path)
    return _save(_top_results_figure(queries, title), path)


def _frame(axis: Any, colour: str) -> None:
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def _top_results_figure(queries: Sequence[QueryPicture], title: str = "") -> Any:
    if not queries:
        raise ValueError("queries: expected at least one query to draw")
    with_attention = any(q.attention is not None for q in queries)
    with_target = any(q.target is not None for q in queries)
    width = max(len(q.results) for q in queries)
    columns = 1 + int(with_attention) + width + int(with_target)
    figure = require_matplotlib()(figsize=(1.9 * columns, 2.3 * len(queries)), layout="constrained")
    axes = figure.subplots(len(queries), columns, squeeze=False)
    for row, query in enumerate(queries):
        axes[row][0].imshow(_as_pixels(query.reference))
        label = f"{query.label}: " if query.label else ""
        axes[row][0].set_title(_wrap(label + query.text), fontsize=7, parse_math=False)
        first = 1
        if with_attention:
            first = 2
            axis = axes[row][1]
            if query.attention:
                axis.imshow(_as_pixels(query.reference))
                size = (query.reference.shape[1], query.reference.shape[2])  # (3, H, W)
                heat = spatial_attention(query.attention[0], size)
                axis.imshow(heat.numpy(), cmap="magma", alpha=0.6)
                axis.set_title("joint attention\n(finest level)", fontsize=7)
            else:
                axis.set_title("no attention\nmaps", fontsize=7)
                axis.axis("off")
        for i in range(width):
            axis = axes[row][first + i]
            if i >= len(query.results):
                axis.axis("off")
                continue
            axis.imshow(_as_pixels(query.results[i]))
            good = bool(query.correct[i]) if i < len(query.correct) else None
            if good is not None:
                _frame(axis, "tab:green" if good else "tab:red")
            score = f" {query.scores[i]:.2f}" if i < len(query.scores) else ""
            axis.set_xlabel(f"#{i + 1}{score}", fontsize=7)
        if with_target:
            axis = axes[row][first + width]
            if query.target is None:
                axis.axis("off")
            else:
                axis.imshow(_as_pixels(query.target))
                rank = query.target_rank
                axis.set_title("correct target", fontsize=7)
                axis.set_xlabel("rank unknown" if rank is None else f"rank {rank}", fontsize=7)
                if rank is not None:
                    _frame(axis, "tab:green" if rank <= len(query.results) else "tab:red")
        for axis in axes[row]:
            _blank(axis)
    if title:
        figure.suptitle(_text(title), fontsize=9, parse_math=False)
    return figure
