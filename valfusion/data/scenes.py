"""Scenes of the synthetic benchmark and the text edits between them.

A scene is a set of one to four objects on a 3 x 3 grid, at most one per cell. An
object has a shape, a colour, a size and a cell. Its canonical :attr:`Scene.key`
names its meaning, so that ground truth is decided by meaning, not pixels. An
:class:`Edit` is a text ("make the top left object red") with the scene it
produces; each edit kind has several phrasings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "CELL_NAMES",
    "COLORS",
    "EDIT_KINDS",
    "MAX_OBJECTS",
    "SHAPES",
    "SIZES",
    "Edit",
    "Scene",
    "SceneObject",
    "sample_edit",
    "sample_scene",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# name -> RGB in [0, 1]; chosen to stay apart under the renderer's colour jitter
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "cyan": (0.10, 0.85, 0.90),
    "orange": (1.00, 0.55, 0.00),
    "white": (0.95, 0.95, 0.95),
}
SIZES: tuple[str, ...] = ("small", "large")
# row-major 3 x 3 grid: cell = 3 * row + column
CELL_NAMES: tuple[str, ...] = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip
EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "add", "remove", "move")
MAX_OBJECTS = 4

ObjectFilter = Callable[["SceneObject"], bool]


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        cell: grid cell, ``0..8`` row-major (``CELL_NAMES[cell]`` names it).
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        size: one of :data:`SIZES`.
    """

    cell: int
    shape: str
    color: str
    size: str

    def describe(self) -> str:
        """``"a small red circle at the top left"``."""
        return f"a {self.size} {self.color} {self.shape} at the {CELL_NAMES[self.cell]}"


@dataclass(frozen=True)
class Scene:
    """A set of objects, at most one per cell, kept sorted by cell.

    Attributes:
        objects: the objects, sorted by cell.
    """

    objects: tuple[SceneObject, ...]

    @classmethod
    def of(cls, objects: Sequence[SceneObject]) -> Scene:
        """Build a scene from objects in any order.

        Args:
            objects: one to nine objects in distinct cells.

        Returns:
            The scene, objects sorted by cell.

        Raises:
            ValueError: two objects share a cell, or there are no objects.
        """
        cells = [o.cell for o in objects]
        if not objects or len(set(cells)) != len(cells):
            raise ValueError(f"objects: expected 1+ objects in distinct cells, got cells {cells}")
        return cls(tuple(sorted(objects)))

    @property
    def key(self) -> str:
        """Canonical key of the scene's meaning: equal keys, equal scenes.

        ``"0:small-red-circle|4:large-blue-square"``.
        """
        return "|".join(f"{o.cell}:{o.size}-{o.color}-{o.shape}" for o in self.objects)

    def describe(self) -> str:
        """Plain description: ``"a small red circle at the top left, a large ... at the center"``."""
        return ", ".join(o.describe() for o in self.objects)

    def at(self, cell: int) -> SceneObject | None:
        """The object at a cell.

        Args:
            cell: grid cell ``0..8``.

        Returns:
            The object there, or ``None``.
        """
        return next((o for o in self.objects if o.cell == cell), None)

    def without(self, obj: SceneObject) -> Scene:
        """The scene without an object (may leave it empty; edits never do).

        Args:
            obj: an object of the scene.

        Returns:
            The scene without ``obj``.
        """
        return Scene(tuple(o for o in self.objects if o != obj))

    def with_object(self, obj: SceneObject) -> Scene:
        """The scene with one more object.

        Args:
            obj: the object to add; its cell must be free.

        Returns:
            The scene with ``obj``.
        """
        return Scene.of([*self.objects, obj])


@dataclass(frozen=True)
class Edit:
    """A text edit and its meaning: ``result = source - before + after``.

    Attributes:
        kind: one of :data:`EDIT_KINDS`.
        text: the feedback text.
        source: the scene edited.
        result: the scene the text asks for.
        before: the object acted on (``None`` for ``"add"``).
        after: the object as the text wants it (``None`` for ``"remove"``).
        names_location: whether the text refers to a grid cell.
    """

    kind: str
    text: str
    source: Scene
    result: Scene
    before: SceneObject | None
    after: SceneObject | None
    names_location: bool


def _random_object(rng: random.Random, cell: int) -> SceneObject:
    return SceneObject(cell, rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES))


def sample_scene(rng: random.Random, allowed: ObjectFilter | None = None) -> Scene:
    """Draw a scene of 1 to :data:`MAX_OBJECTS` objects in distinct random cells.

    Args:
        rng: the random stream (consumed).
        allowed: objects to keep; others are redrawn (compositional split).

    Returns:
        The scene.
    """
    count = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(len(CELL_NAMES)), count)
    objects = []
    for cell in cells:
        obj = _random_object(rng, cell)
        while allowed is not None and not allowed(obj):
            obj = _random_object(rng, cell)
        objects.append(obj)
    return Scene.of(objects)


def _attribute_description(scene: Scene, obj: SceneObject) -> str | None:
    """Shortest unambiguous description by attributes ("circle", "red circle"...), if any."""
    for fields in (("shape",), ("color", "shape"), ("size", "color", "shape")):
        value = tuple(getattr(obj, f) for f in fields)
        if sum(tuple(getattr(o, f) for f in fields) == value for o in scene.objects) == 1:
            return " ".join(value)
    return None


def _describe(rng: random.Random, scene: Scene, obj: SceneObject) -> tuple[str, bool]:
    """Refer to ``obj`` by attributes or by its cell; returns ``(phrase, names_location)``."""
    by_attributes = _attribute_description(scene, obj)
    if by_attributes is not None and rng.random() < 0.5:
        return by_attributes, False
    return f"{CELL_NAMES[obj.cell]} object", True


_PHRASES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "make the {cell} object {color}",
        "change the color of the {cell} object to {color}",
        "the object at the {cell} should be {color}",
        "paint the {cell} {shape} {color}",
    ),
    "reshape": (
        "make the {desc} a {shape}",
        "turn the {desc} into a {shape}",
        "change the {desc} to a {shape}",
    ),
    "add": (
        "add a {size} {color} {shape} at the {cell}",
        "put a {size} {color} {shape} in the {cell}",
        "place a {size} {color} {shape} at the {cell}",
    ),
    "remove": (
        "remove the {desc}",
        "take away the {desc}",
        "delete the {desc}",
    ),
    "move": (
        "move the {desc} to the {cell}",
        "put the {desc} at the {cell} instead",
        "the {desc} should go to the {cell}",
    ),
}


def _feasible_kinds(scene: Scene) -> list[str]:
    kinds = ["recolor", "reshape", "move"]  # at most 4 of 9 cells are taken: move always fits
    if len(scene.objects) < MAX_OBJECTS:
        kinds.append("add")
    if len(scene.objects) > 1:
        kinds.append("remove")
    return kinds


def _edit_once(rng: random.Random, scene: Scene, kind: str) -> Edit:
    free = [c for c in range(len(CELL_NAMES)) if scene.at(c) is None]
    phrase = rng.choice(_PHRASES[kind])
    before: SceneObject | None = None
    after: SceneObject | None = None
    if kind == "add":
        after = _random_object(rng, rng.choice(free))
        text = phrase.format(
            size=after.size, color=after.color, shape=after.shape, cell=CELL_NAMES[after.cell]
        )
        return Edit(kind, text, scene, scene.with_object(after), None, after, True)
    before = rng.choice(scene.objects)
    if kind == "recolor":
        after = replace(before, color=rng.choice([c for c in COLORS if c != before.color]))
        text = phrase.format(cell=CELL_NAMES[before.cell], color=after.color, shape=before.shape)
        located = True
    elif kind == "reshape":
        after = replace(before, shape=rng.choice([s for s in SHAPES if s != before.shape]))
        desc, located = _describe(rng, scene, before)
        text = phrase.format(desc=desc, shape=after.shape)
    elif kind == "remove":
        desc, located = _describe(rng, scene, before)
        text = phrase.format(desc=desc)
        return Edit(kind, text, scene, scene.without(before), before, None, located)
    else:  # move
        after = replace(before, cell=rng.choice(free))
        desc, _ = _describe(rng, scene, before)
        text = phrase.format(desc=desc, cell=CELL_NAMES[after.cell])
        located = True
    return Edit(kind, text, scene, scene.without(before).with_object(after), before, after, located)


def sample_edit(
    rng: random.Random,
    scene: Scene,
    *,
    kinds: Sequence[str] = EDIT_KINDS,
) -> Edit:
    """Draw an edit of ``scene``: a kind feasible for it, then its details and a phrasing.

    Feasible kinds: recolor, reshape and move always; add with fewer than
    :data:`MAX_OBJECTS` objects; remove with more than one object.

    Args:
        rng: the random stream (consumed).
        scene: the scene to edit.
        kinds: the edit kinds to draw from.

    Returns:
        The edit; its ``result`` always differs from ``scene``.

    Raises:
        ValueError: none of ``kinds`` applies to ``scene``.
    """
    feasible = [k for k in _feasible_kinds(scene) if k in kinds]
    if not feasible:
        raise ValueError(f"kinds: none of {tuple(kinds)} applies to scene {scene.key!r}")
    return _edit_once(rng, scene, rng.choice(feasible))
