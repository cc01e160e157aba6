"""The built-in synthetic benchmark: scenes, edits, rendering, ground truth by meaning."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import subprocess
import sys

import pytest
import torch

from valfusion.data import SyntheticBenchmark
from valfusion.data.images import IMAGENET_MEAN, IMAGENET_STD
from valfusion.data.render import render_scenes
from valfusion.data.scenes import (
    CELL_NAMES,
    COLORS,
    EDIT_KINDS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    sample_edit,
    sample_scene,
)
from valfusion.data.synthetic import HELD_OUT_COMBINATIONS


def _small(**kwargs) -> SyntheticBenchmark:
    options = {"num_train": 40, "num_test": 30, "num_distractors": 30, "seed": 7}
    options.update(kwargs)
    return SyntheticBenchmark(**options)


def _edits_of_kind(kind: str, count: int = 200) -> list:
    rng = random.Random(f"test-{kind}")
    edits = []
    while len(edits) < count:
        scene = sample_scene(rng)
        if (kind == "add" and len(scene.objects) == 4) or (
            kind == "remove" and len(scene.objects) == 1
        ):
            continue
        edits.append(sample_edit(rng, scene, kinds=(kind,)))
    return edits


def _digest(bench: SyntheticBenchmark) -> str:
    h = hashlib.sha256()
    for split in (bench.train, bench.test):
        for t in split.triplets:
            h.update(repr((t.reference, t.text, t.targets)).encode())
        for image_id in split.gallery:
            pixels = split.images.render(image_id).contiguous()
            h.update(ctypes.string_at(pixels.data_ptr(), pixels.numel()))
    return h.hexdigest()


def test_same_seed_gives_bit_identical_triplets_and_images():
    a, b = _small(), _small()
    assert a.train.triplets == b.train.triplets
    assert a.test.triplets == b.test.triplets
    assert a.test.gallery == b.test.gallery
    for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
        for image_id in split_a.gallery:
            assert torch.equal(split_a.images(image_id), split_b.images(image_id))


def test_same_seed_gives_same_data_in_a_fresh_process_with_another_hash_seed():
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
        "from test_data_synthetic import _digest, _small; print(_digest(_small()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == _digest(_small())


def test_different_seeds_give_different_data():
    assert _small(seed=1).test.triplets != _small(seed=2).test.triplets


def test_test_split_does_not_depend_on_the_training_size():
    assert _small(num_train=5).test.triplets == _small(num_train=50).test.triplets


def test_train_and_test_scenes_come_from_different_streams():
    bench = _small(num_train=30, num_test=30)
    train_keys = [bench.scene(t.reference).key for t in bench.train.triplets]
    test_keys = [bench.scene(t.reference).key for t in bench.test.triplets]
    assert train_keys != test_keys


def test_images_have_the_requested_size_and_are_normalised_renders():
    bench = _small(image_size=48)
    image_id = bench.train.triplets[0].reference
    render = bench.train.images.render(image_id)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (render.float() / 255 - mean) / std
    assert render.shape == (3, 48, 48) and render.dtype == torch.uint8
    assert torch.allclose(bench.train.images(image_id), expected, atol=1e-5)


def test_two_renders_of_one_scene_differ_in_pixels():
    scene = Scene.of(
        [SceneObject(0, "circle", "red", "large"), SceneObject(5, "square", "blue", "small")]
    )
    first, second = render_scenes([scene, scene], [1, 2])
    assert not torch.equal(first, second)


def test_gallery_renders_with_equal_keys_differ_in_pixels():
    bench = _small(num_test=60, num_distractors=120)
    pairs = [t.targets[:2] for t in bench.test.triplets if len(t.targets) > 1]
    assert pairs, "expected some queries with several renders of the edited scene"
    for a, b in pairs:
        assert bench.scene(a).key == bench.scene(b).key
        assert not torch.equal(bench.test.images.render(a), bench.test.images.render(b))


def test_rendering_in_a_batch_equals_rendering_one_by_one():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(5)]
    seeds = [11, 12, 13, 14, 15]
    batch = render_scenes(scenes, seeds)
    singles = torch.cat([render_scenes([s], [seed]) for s, seed in zip(scenes, seeds)])
    assert torch.equal(batch, singles)


def test_render_paints_the_object_colour_at_its_cell_centre_and_background_elsewhere():
    scene = Scene.of([SceneObject(4, "square", "red", "large")])
    image = render_scenes([scene], [3], image_size=63)[0].float() / 255
    centre = image[:, 30:33, 30:33].mean(dim=(1, 2))  # the middle cell spans pixels 21..41
    corner = image[:, 0:5, 0:5].mean(dim=(1, 2))
    red = torch.tensor(COLORS["red"])
    assert (centre - red).abs().max() < 0.15
    assert (corner - 0.22).abs().max() < 0.1  # background grey 0.22 +- 0.06 tint, noise averaged


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_covers_a_different_set_of_pixels(shape):
    others = [s for s in SHAPES if s != shape]
    masks = {}
    for s in SHAPES:
        image = render_scenes([Scene.of([SceneObject(4, s, "white", "large")])], [5])[0]
        masks[s] = image.float().mean(0) > 180  # white object on a dark background
    assert all(not torch.equal(masks[shape], masks[o]) for o in others)


def test_recolor_changes_only_the_colour_of_the_object_at_the_named_cell():
    for edit in _edits_of_kind("recolor"):
        assert edit.before == edit.source.at(edit.before.cell)
        assert edit.after.color != edit.before.color
        assert (edit.after.cell, edit.after.shape, edit.after.size) == (
            edit.before.cell,
            edit.before.shape,
            edit.before.size,
        )
        expected = {*edit.source.objects} - {edit.before} | {edit.after}
        assert set(edit.result.objects) == expected
        assert CELL_NAMES[edit.before.cell] in edit.text and edit.after.color in edit.text


def test_reshape_changes_only_the_shape_of_the_described_object():
    for edit in _edits_of_kind("reshape"):
        assert edit.after.shape != edit.before.shape
        assert (edit.after.cell, edit.after.color, edit.after.size) == (
            edit.before.cell,
            edit.before.color,
            edit.before.size,
        )
        assert set(edit.result.objects) == {*edit.source.objects} - {edit.before} | {edit.after}
        assert edit.text.endswith(edit.after.shape)
        named = CELL_NAMES[edit.before.cell] in edit.text or edit.before.shape in edit.text
        assert named


def test_add_puts_a_new_object_in_a_free_cell():
    for edit in _edits_of_kind("add"):
        assert edit.before is None
        assert edit.source.at(edit.after.cell) is None
        assert set(edit.result.objects) == {*edit.source.objects, edit.after}
        description = f"{edit.after.size} {edit.after.color} {edit.after.shape}"
        assert description in edit.text and CELL_NAMES[edit.after.cell] in edit.text


def test_remove_deletes_exactly_the_described_object():
    for edit in _edits_of_kind("remove"):
        assert edit.after is None and edit.before in edit.source.objects
        assert set(edit.result.objects) == {*edit.source.objects} - {edit.before}
        assert len(edit.result.objects) >= 1
        if edit.names_location:
            assert CELL_NAMES[edit.before.cell] in edit.text
        else:  # described by attributes that only this object has
            words = set(edit.text.split())

            def fits(o: SceneObject, words: set[str] = words) -> bool:
                return (
                    o.shape in words
                    and (o.color in words or not words & set(COLORS))
                    and (o.size in words or not words & set(SIZES))
                )

            assert [o for o in edit.source.objects if fits(o)] == [edit.before]


def test_move_changes_only_the_cell_of_the_object_to_a_free_named_cell():
    for edit in _edits_of_kind("move"):
        assert edit.source.at(edit.after.cell) is None
        assert (edit.after.shape, edit.after.color, edit.after.size) == (
            edit.before.shape,
            edit.before.color,
            edit.before.size,
        )
        assert set(edit.result.objects) == {*edit.source.objects} - {edit.before} | {edit.after}
        assert edit.text.split(" the ")[-1].removesuffix(" instead") == CELL_NAMES[edit.after.cell]


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_each_edit_kind_has_several_phrasings(kind):
    openings = {" ".join(edit.text.split()[:2]) for edit in _edits_of_kind(kind, 100)}
    assert len(openings) >= 3


def test_some_edits_name_locations_and_those_texts_contain_a_cell_name():
    edits = [e for kind in EDIT_KINDS for e in _edits_of_kind(kind, 50)]
    assert {e.names_location for e in edits} == {True, False}
    assert all(any(c in e.text for c in CELL_NAMES) for e in edits if e.names_location)


def test_correct_targets_are_all_gallery_renders_of_the_edited_scene_except_the_reference():
    bench = _small(num_test=60, num_distractors=120)
    keys = {g: bench.scene(g).key for g in bench.test.gallery}
    for triplet, edit in zip(bench.test.triplets, bench.edits("test")):
        edited = {*edit.source.objects} - {edit.before} | ({edit.after} - {None})
        edited_key = Scene.of(sorted(edited)).key
        expected = {g for g, key in keys.items() if key == edited_key} - {triplet.reference}
        assert set(triplet.targets) == expected
        assert bench.scene(triplet.reference) == edit.source


def test_side_information_describes_every_object_of_the_scene():
    bench = _small()
    for image_id in bench.test.gallery[:20]:
        scene = bench.scene(image_id)
        expected = ", ".join(
            f"a {o.size} {o.color} {o.shape} at the {CELL_NAMES[o.cell]}" for o in scene.objects
        )
        assert bench.test.side_info[image_id] == expected


def test_compositional_split_keeps_held_out_pairs_out_of_training():
    bench = _small(num_train=80, compositional=True)
    for triplet in bench.train.triplets:
        for image_id in (triplet.reference, triplet.target):
            pairs = {(o.color, o.shape) for o in bench.scene(image_id).objects}
            assert not pairs & HELD_OUT_COMBINATIONS


def test_compositional_split_puts_a_held_out_pair_in_every_test_target():
    bench = _small(compositional=True)
    for triplet in bench.test.triplets:
        pairs = {(o.color, o.shape) for o in bench.scene(triplet.target).objects}
        assert pairs & HELD_OUT_COMBINATIONS


def test_without_compositional_split_training_sees_held_out_pairs():
    bench = _small(num_train=80)
    seen = {(o.color, o.shape) for t in bench.train.triplets for o in bench.scene(t.target).objects}
    assert seen & HELD_OUT_COMBINATIONS


def test_held_out_pairs_leave_every_colour_and_shape_seen_in_training():
    colors = {c for c, _ in HELD_OUT_COMBINATIONS}
    shapes = {s for _, s in HELD_OUT_COMBINATIONS}
    for color in colors:
        assert {s for c, s in HELD_OUT_COMBINATIONS if c == color} != set(SHAPES)
    for shape in shapes:
        assert {c for c, s in HELD_OUT_COMBINATIONS if s == shape} != set(COLORS)


def test_gallery_holds_references_targets_and_distractors():
    bench = _small(num_test=30, num_distractors=17)
    used = {t.reference for t in bench.test.triplets} | {t.target for t in bench.test.triplets}
    assert len(bench.test.gallery) == 2 * 30 + 17
    assert used <= set(bench.test.gallery)


def test_metadata_records_seed_protocol_and_held_out_pairs():
    meta = _small(compositional=True).data().metadata()
    assert meta["protocol"] == "synthetic" and meta["seed"] == 7
    assert len(meta["held_out"]) == len(HELD_OUT_COMBINATIONS)
    assert meta["splits"]["test"]["gallery_size"] == 2 * 30 + 30


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_train": 0}, "num_train"),
        ({"num_test": -1}, "num_test"),
        ({"image_size": 10}, "image_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticBenchmark(**kwargs)
