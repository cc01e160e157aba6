"""The top-results picture shows each query's best-ranked correct target and its rank."""

from __future__ import annotations

import pytest
import torch

from valfusion.engine.plots import QueryPicture, _top_results_figure, plot_top_results


def _image(value: float) -> torch.Tensor:
    return torch.full((3, 8, 8), value)


def _query(target_rank: int | None, *, with_target: bool = True) -> QueryPicture:
    return QueryPicture(
        reference=_image(0.1),
        text="make the top right object red",
        target=_image(0.9) if with_target else None,
        target_rank=target_rank,
        results=[_image(0.2 + 0.1 * i) for i in range(5)],
        correct=[target_rank == i + 1 for i in range(5)],
        scores=[0.9 - 0.1 * i for i in range(5)],
    )


def test_missed_target_is_shown_with_its_rank_in_a_red_frame():
    import matplotlib.colors

    figure = _top_results_figure([_query(17)])
    assert len(figure.axes) == 7  # reference, five results, the target
    target = figure.axes[-1]
    assert target.get_xlabel() == "rank 17"
    shown = torch.as_tensor(target.images[0].get_array())
    assert torch.allclose(shown, torch.full((8, 8, 3), 0.9, dtype=shown.dtype))
    assert target.spines["left"].get_edgecolor() == pytest.approx(matplotlib.colors.to_rgba("tab:red"))


def test_target_in_the_top_results_is_framed_green():
    import matplotlib.colors

    figure = _top_results_figure([_query(2)])
    target = figure.axes[-1]
    assert target.get_xlabel() == "rank 2"
    assert target.spines["left"].get_edgecolor() == pytest.approx(matplotlib.colors.to_rgba("tab:green"))


def test_queries_without_a_target_keep_the_old_layout():
    figure = _top_results_figure([_query(None, with_target=False), _query(None, with_target=False)])
    assert len(figure.axes) == 2 * 6


def test_plot_top_results_writes_a_png(tmp_path):
    path = plot_top_results([_query(17), _query(1)], tmp_path / "top.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
