"""Rasterising synthetic scenes in pure torch, with nuisance.

Each render draws its own nuisance from its seed: the object's position inside its
cell, its exact radius, its colour, the background tint and per-pixel Gaussian
noise. Two renders of one scene therefore differ in pixels while the scene (its
meaning) is the same. A render depends only on ``(scene, seed, image_size)``, so
rendering in batches of any size gives the same bytes.

Drawing fresh Gaussian noise for every render costs more than drawing the scene, so
the noise is a crop, at a per-render random offset, of one of a few fixed noise
fields twice the canvas size (65,536 distinct crops at 64 px).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from valfusion.data.scenes import COLORS, SHAPES, Scene

__all__ = ["render_scenes"]

_RADIUS = {"small": 0.20, "large": 0.38}  # fraction of the cell side
_RADIUS_JITTER = 0.10  # relative
_COLOR_JITTER = 0.08  # per channel, absolute
_BACKGROUND = 0.22
_BACKGROUND_JITTER = 0.06
_NOISE_STD = 0.04
_SQUARE_HALF_SIDE = 0.85  # times the radius: about the circle's area
_TRIANGLE_BASE = 0.75  # base at +0.75 r below the centre, apex at -r
_NOISE_FIELDS = 16


@functools.lru_cache(maxsize=4)
def _noise_fields(image_size: int) -> Tensor:
    """Fixed standard-normal fields ``(_NOISE_FIELDS, 3, 2 * image_size, 2 * image_size)``."""
    generator = torch.Generator().manual_seed(20200614)
    size = 2 * image_size
    return torch.randn(_NOISE_FIELDS, 3, size, size, generator=generator)


def _circle(dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    return dx.square() + dy.square() <= radius.square()


def _square(dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    return torch.maximum(dx.abs(), dy.abs()) <= _SQUARE_HALF_SIDE * radius


def _triangle(dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    inside_rows = (dy >= -radius) & (dy <= _TRIANGLE_BASE * radius)
    return inside_rows & (dx.abs() <= (dy + radius) / (1 + _TRIANGLE_BASE))


_INSIDE = {"circle": _circle, "square": _square, "triangle": _triangle}


@dataclass
class _Nuisance:
    """Every drawn quantity of a batch of renders (objects listed flat, K in all)."""

    slots: list[int]  # per object: n * 9 + cell
    shapes: list[int]  # per object: index in SHAPES
    geometry: list[float]  # per object: centre x, centre y (cell frame), radius
    colors: list[float]  # per object: R, G, B
    backgrounds: list[float]  # per render: R, G, B
    noise: list[tuple[int, int, int]]  # per render: noise field, row, column


def _draw_nuisance(
    scenes: Sequence[Scene], seeds: Sequence[int], cell: int, image_size: int
) -> _Nuisance:
    """Draw each render's nuisance from its own seed (so batching does not matter)."""
    drawn = _Nuisance([], [], [], [], [], [])
    for n, (scene, seed) in enumerate(zip(scenes, seeds)):
        rng = random.Random(seed)
        drawn.backgrounds += [
            _BACKGROUND + rng.uniform(-1, 1) * _BACKGROUND_JITTER for _ in range(3)
        ]
        drawn.noise.append(
            (rng.randrange(_NOISE_FIELDS), rng.randrange(image_size), rng.randrange(image_size))
        )
        for obj in scene.objects:
            radius = cell * _RADIUS[obj.size] * (1 + rng.uniform(-1, 1) * _RADIUS_JITTER)
            slack = max(0.0, cell / 2 - radius - 0.5)
            cx = cell / 2 + rng.uniform(-1, 1) * slack
            cy = cell / 2 + rng.uniform(-1, 1) * slack
            drawn.slots.append(9 * n + obj.cell)
            drawn.shapes.append(SHAPES.index(obj.shape))
            drawn.geometry += [cx, cy, radius]
            drawn.colors += [
                min(1.0, max(0.0, c + rng.uniform(-1, 1) * _COLOR_JITTER))
                for c in COLORS[obj.color]
            ]
    return drawn


def render_scenes(scenes: Sequence[Scene], seeds: Sequence[int], image_size: int = 64) -> Tensor:
    """Render scenes with per-render nuisance.

    The grid's cells are ``image_size // 3`` pixels square (any remainder is a
    background border at the right and bottom). Object masks on pixel centres, with
    ``(dx, dy)`` the offset from the object centre and ``r`` its radius: circle
    ``dx^2 + dy^2 <= r^2``; square ``max(|dx|, |dy|) <= 0.85 r``; triangle
    ``-r <= dy <= 0.75 r`` and ``|dx| <= (dy + r) / 1.75``. Then
    ``x = clamp(canvas + 0.04 * noise, 0, 1)`` with standard-normal ``noise``, quantised
    to 8 bits.

    Args:
        scenes: ``N`` scenes.
        seeds: ``N`` ints, one per render; the only source of nuisance.
        image_size: side of the square canvas in pixels.

    Returns:
        uint8 tensor ``(N, 3, image_size, image_size)``.
    """
    if len(scenes) != len(seeds):
        raise ValueError(f"seeds: expected one seed per scene ({len(scenes)}), got {len(seeds)}")
    count, cell = len(scenes), image_size // 3
    drawn = _draw_nuisance(scenes, seeds, cell, image_size)
    background = rearrange(torch.tensor(drawn.backgrounds), "(n c) -> n c", c=3)
    # one (3, cell, cell) patch per grid cell, background first, objects painted in
    patches = repeat(background, "n c -> (n k) c h w", k=9, h=cell, w=cell).contiguous()
    if drawn.slots:
        slots, shapes = torch.tensor(drawn.slots), torch.tensor(drawn.shapes)
        geometry = rearrange(torch.tensor(drawn.geometry), "(o g) -> o g 1 1", g=3)
        colors = rearrange(torch.tensor(drawn.colors), "(o c) -> o c 1 1", c=3)
        coords = torch.arange(cell, dtype=torch.float32) + 0.5
        for shape_id, shape in enumerate(SHAPES):
            chosen = (shapes == shape_id).nonzero().squeeze(1)
            if chosen.numel() == 0:
                continue
            cx, cy, radius = geometry[chosen].unbind(1)  # each (K, 1, 1)
            dx = rearrange(coords, "w -> 1 1 w") - cx
            dy = rearrange(coords, "h -> 1 h 1") - cy
            mask = rearrange(_INSIDE[shape](dx, dy, radius), "k h w -> k 1 h w")
            where = slots[chosen]
            patches[where] = torch.where(mask, colors[chosen], patches[where])
    canvas = repeat(background, "n c -> n c h w", h=image_size, w=image_size).contiguous()
    canvas[:, :, : 3 * cell, : 3 * cell] = rearrange(
        patches, "(n r k) c h w -> n c (r h) (k w)", n=count, r=3, k=3
    )
    fields = _noise_fields(image_size)
    noise = torch.stack(
        [fields[k, :, y : y + image_size, x : x + image_size] for k, y, x in drawn.noise]
    )
    pixels = (canvas + _NOISE_STD * noise).clamp_(0.0, 1.0)
    return pixels.mul_(255).add_(0.5).to(torch.uint8)  # round half up; values are >= 0
