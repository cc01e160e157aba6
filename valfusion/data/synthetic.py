"""The built-in benchmark: synthetic scenes edited by text, ground truth by meaning.

A procedural composed-retrieval benchmark in the spirit of CSS (the "CLEVR simple
scenes" data used by TIRG) that needs no download. Each query is a rendered scene
plus a text edit; the correct targets are every gallery image whose scene key
equals the edited scene's key. Everything is drawn from ``seed`` (train and test
from different streams), rendered in memory on first use and cached.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from einops import rearrange
from torch import Tensor

from valfusion._validation import check_positive_int
from valfusion.data.images import IMAGENET_MEAN, IMAGENET_STD
from valfusion.data.render import render_scenes
from valfusion.data.scenes import (
    COLORS,
    SHAPES,
    Edit,
    Scene,
    SceneObject,
    sample_edit,
    sample_scene,
)
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["HELD_OUT_COMBINATIONS", "SyntheticBenchmark", "SyntheticImages"]

HELD_OUT_COMBINATIONS: frozenset[tuple[str, str]] = frozenset(
    (color, shape)
    for c, color in enumerate(COLORS)
    for s, shape in enumerate(SHAPES)
    if (c + s) % 4 == 0
)
"""(colour, shape) pairs seen only at test time in the compositional split.

Every shape loses two colours and six colours lose one shape, so no colour or shape
is unseen on its own: only the combination is new.
"""


class SyntheticImages:
    """The renders of one split, by image id; rendered in chunks on first use, then cached.

    Args:
        ids: image ids.
        scenes: the scene of each id.
        seeds: the nuisance seed of each id.
        image_size: canvas side in pixels.
        mean: per-channel mean used to normalise.
        std: per-channel standard deviation used to normalise.

    ``images(image_id)`` returns a float tensor ``(3, image_size, image_size)``.
    """

    chunk_size = 128

    def __init__(
        self,
        ids: Sequence[str],
        scenes: Sequence[Scene],
        seeds: Sequence[int],
        image_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self._position = {image_id: i for i, image_id in enumerate(ids)}
        self.scenes = tuple(scenes)
        self.seeds = tuple(seeds)
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        # x / 255 then (x - mean) / std, folded into one scale and shift per channel
        self._scale = rearrange(1 / (255 * torch.tensor(self.std)), "c -> c 1 1")
        self._shift = rearrange(-torch.tensor(self.mean) / torch.tensor(self.std), "c -> c 1 1")
        self._chunks: dict[int, Tensor] = {}

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    def __len__(self) -> int:
        return len(self._position)

    def scene(self, image_id: str) -> Scene:
        """The scene behind an image.

        Args:
            image_id: an id of this split.

        Returns:
            Its :class:`~valfusion.data.scenes.Scene`.
        """
        return self.scenes[self._position[image_id]]

    def render(self, image_id: str) -> Tensor:
        """The raw render of an image (cached).

        Args:
            image_id: an id of this split.

        Returns:
            uint8 tensor ``(3, image_size, image_size)``.
        """
        position = self._position[image_id]
        chunk, offset = divmod(position, self.chunk_size)
        if chunk not in self._chunks:
            window = slice(chunk * self.chunk_size, (chunk + 1) * self.chunk_size)
            self._chunks[chunk] = render_scenes(
                self.scenes[window], self.seeds[window], self.image_size
            )
        return self._chunks[chunk][offset]

    def __call__(self, image_id: str) -> Tensor:
        return torch.addcmul(self._shift, self.render(image_id), self._scale)


@dataclass(frozen=True)
class _SplitPlan:
    ids: list[str]
    scenes: list[Scene]
    seeds: list[int]
    edits: list[Edit]


class SyntheticBenchmark:
    """Synthetic scenes with text edits: train triplets, test queries, gallery, side information.

    Train: ``num_train`` triplets (reference render, edit text, target render). Test:
    ``num_test`` queries; the gallery holds their references and targets plus
    ``num_distractors`` renders of other edits of the test references (hard
    negatives that share most of the target's scene). A query's correct targets are
    all gallery images whose scene key equals the edited scene's key, the reference
    excluded. Side information of an image is the plain description of its scene.

    With ``compositional=True`` no train scene contains a (colour, shape) pair of
    :data:`HELD_OUT_COMBINATIONS`, and every test target contains at least one.

    Args:
        num_train: training triplets.
        num_test: test queries.
        num_distractors: extra gallery renders; default ``num_test``.
        seed: the seed of everything (same seed, same data, bit for bit).
        image_size: canvas side in pixels; images are ``(3, image_size, image_size)``.
        compositional: hold out some (colour, shape) pairs for test.
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_test: int = 500,
        *,
        num_distractors: int | None = None,
        seed: int = 0,
        image_size: int = 64,
        compositional: bool = False,
    ) -> None:
        self.num_train = check_positive_int(num_train, "num_train")
        self.num_test = check_positive_int(num_test, "num_test")
        if num_distractors is None:
            num_distractors = num_test
        if (
            isinstance(num_distractors, bool)
            or not isinstance(num_distractors, int)
            or num_distractors < 0
        ):
            raise ValueError(
                f"num_distractors: expected a non-negative integer, got {num_distractors!r}"
            )
        self.num_distractors = num_distractors
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an integer, got {seed!r}")
        self.seed = seed
        self.image_size = check_positive_int(image_size, "image_size")
        if image_size < 24:
            raise ValueError(
                f"image_size: expected at least 24 pixels (a 3 x 3 grid), got {image_size}"
            )
        self.compositional = bool(compositional)
        self.held_out = HELD_OUT_COMBINATIONS if compositional else frozenset()
        self._plans: dict[str, _SplitPlan] = {}

    def _rng(self, split: str) -> random.Random:
        # str seeds are hashed with SHA-512 by random.Random: stable across processes
        return random.Random(f"valfusion-synthetic/{self.seed}/{split}")

    def _is_held_out(self, obj: SceneObject) -> bool:
        return (obj.color, obj.shape) in self.held_out

    def _seen(self, obj: SceneObject) -> bool:
        return not self._is_held_out(obj)

    def _query(self, rng: random.Random, split: str) -> Edit:
        while True:
            if split == "train":
                edit = sample_edit(rng, sample_scene(rng, self._seen if self.held_out else None))
                if all(map(self._seen, edit.result.objects)):
                    return edit
            else:
                edit = sample_edit(rng, sample_scene(rng))
                if not self.held_out or any(map(self._is_held_out, edit.result.objects)):
                    return edit

    def _plan(self, split: str) -> _SplitPlan:
        rng = self._rng(split)
        count = self.num_train if split == "train" else self.num_test
        scenes, seeds, edits = [], [], []
        for _ in range(count):
            edit = self._query(rng, split)
            edits.append(edit)
            scenes += [edit.source, edit.result]
            seeds += [rng.getrandbits(63), rng.getrandbits(63)]
        if split == "test":
            for _ in range(self.num_distractors):
                reference = edits[rng.randrange(count)].source
                scenes.append(sample_edit(rng, reference).result)
                seeds.append(rng.getrandbits(63))
        ids = [f"{split}/{i:06d}" for i in range(len(scenes))]
        return _SplitPlan(ids, scenes, seeds, edits)

    def _get_plan(self, split: str) -> _SplitPlan:
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        if split not in self._plans:
            self._plans[split] = self._plan(split)
        return self._plans[split]

    def edits(self, split: str) -> list[Edit]:
        """The edit behind each triplet of ``split`` (kind, whether it names a location...).

        Args:
            split: ``"train"`` or ``"test"``.

        Returns:
            One :class:`~valfusion.data.scenes.Edit` per triplet, aligned with the split's triplets.
        """
        return list(self._get_plan(split).edits)

    def _build(self, split: str) -> DataSplit:
        plan = self._get_plan(split)
        images = SyntheticImages(plan.ids, plan.scenes, plan.seeds, self.image_size)
        by_key: dict[str, list[str]] = {}
        for image_id, scene in zip(plan.ids, plan.scenes):
            by_key.setdefault(scene.key, []).append(image_id)
        triplets = []
        for i, edit in enumerate(plan.edits):
            reference, target = plan.ids[2 * i], plan.ids[2 * i + 1]
            if split == "train":
                targets: tuple[str, ...] = (target,)
            else:  # every render of the edited scene is correct; its own target first
                others = [g for g in by_key[edit.result.key] if g not in (target, reference)]
                targets = (target, *others)
            triplets.append(Triplet(reference, edit.text, targets, f"synthetic:{split}:{i}"))
        gallery = None if split == "train" else dict.fromkeys(plan.ids, "synthetic:test:gallery")
        side_info = {image_id: scene.describe() for image_id, scene in zip(plan.ids, plan.scenes)}
        return build_split(
            split,
            triplets,
            images=images,
            origin=f"synthetic:{split}",
            gallery=gallery,
            side_info=side_info,
        )

    @cached_property
    def train(self) -> DataSplit:
        """The training split (built on first access; images render on first use)."""
        return self._build("train")

    @cached_property
    def test(self) -> DataSplit:
        """The test split: queries, gallery (references, targets, distractors), targets by key."""
        return self._build("test")

    def scene(self, image_id: str) -> Scene:
        """The scene behind an image id of either split.

        Args:
            image_id: e.g. ``"train/000003"`` or ``"test/000010"``.

        Returns:
            Its :class:`~valfusion.data.scenes.Scene` (its ``key`` decides ground truth).

        Raises:
            KeyError: no such image.
        """
        split = {"train": self.train, "test": self.test}.get(image_id.split("/", 1)[0])
        if split is None or image_id not in split.images:
            raise KeyError(f"image_id: no synthetic image {image_id!r}")
        images = split.images
        assert isinstance(images, SyntheticImages)  # _build gives every split one
        return images.scene(image_id)

    def data(self, splits: Sequence[str] = ("train", "test")) -> RetrievalData:
        """The benchmark as :class:`RetrievalData` (protocol ``"synthetic"``).

        Args:
            splits: which of ``"train"``, ``"test"`` to build.

        Returns:
            The data with ``evaluation = {"test": ...}`` when ``"test"`` is requested.
        """
        unknown = set(splits) - {"train", "test"}
        if unknown:
            raise ValueError(
                f"splits: expected a subset of ('train', 'test'), got {tuple(splits)!r}"
            )
        return RetrievalData(
            name="synthetic",
            train=self.train if "train" in splits else None,
            evaluation={"test": self.test} if "test" in splits else {},
            protocol="synthetic",
            info={
                "seed": self.seed,
                "image_size": self.image_size,
                "num_distractors": self.num_distractors,
                "compositional": self.compositional,
                "held_out": sorted(f"{color} {shape}" for color, shape in self.held_out),
            },
        )
