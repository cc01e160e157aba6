"""build_retrieval_setup: the "val" and "original" gallery protocols, on real FashionIQ annotations.

The expected gallery sizes are the published facts about the FashionIQ val split (see
tests/fixtures/README.md), not values produced by the code under test.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from valfusion.metrics import build_retrieval_setup, gallery_hash, recall_at_k

FASHIONIQ = Path(__file__).parent / "fixtures" / "fashioniq"


def fashioniq_val(category: str) -> tuple[list[str], list[str], list[str]]:
    """(references, targets, split images) of a FashionIQ val category."""
    pairs = json.loads((FASHIONIQ / "captions" / f"cap.{category}.val.json").read_text("utf-8"))
    images = json.loads((FASHIONIQ / "image_splits" / f"split.{category}.val.json").read_text("utf-8"))
    return [p["candidate"] for p in pairs], [p["target"] for p in pairs], images


@pytest.mark.parametrize(("category", "size"), [("dress", 2628), ("shirt", 3089), ("toptee", 2902)])
def test_val_protocol_gallery_sizes_match_fashioniq(category, size):
    references, targets, _ = fashioniq_val(category)
    assert build_retrieval_setup(references, targets, protocol="val").gallery_size == size


@pytest.mark.parametrize(("category", "size"), [("dress", 3817), ("shirt", 6346), ("toptee", 5373)])
def test_original_protocol_gallery_sizes_match_fashioniq(category, size):
    references, targets, images = fashioniq_val(category)
    setup = build_retrieval_setup(references, targets, protocol="original", images=images)
    assert setup.gallery_size == size


@pytest.mark.parametrize("protocol", ["val", "original"])
def test_fashioniq_targets_and_references_index_their_ids(protocol):
    references, targets, images = fashioniq_val("dress")
    setup = build_retrieval_setup(references, targets, protocol=protocol,
                                  images=images if protocol == "original" else None)
    ids = setup.gallery_ids
    assert [ids[i] for i in setup.targets[:, 0].tolist()] == targets
    assert [ids[i] for i in setup.exclude.tolist()] == references


def test_val_gallery_is_union_of_references_and_targets_without_duplicates():
    setup = build_retrieval_setup(["r1", "r2", "t1"], ["t1", ["t2", "r1"], "t3"], protocol="val")
    assert setup.gallery_ids == ("r1", "r2", "t1", "t2", "t3")


def test_original_gallery_is_the_given_image_list_deduplicated():
    setup = build_retrieval_setup(["a"], ["b"], protocol="original", images=["c", "b", "a", "z", "b"])
    assert setup.gallery_ids == ("a", "b", "c", "z")


def test_gallery_does_not_depend_on_query_order():
    references, targets, _ = fashioniq_val("toptee")
    order = list(range(len(references)))
    random.Random(0).shuffle(order)
    original = build_retrieval_setup(references, targets)
    shuffled = build_retrieval_setup([references[i] for i in order], [targets[i] for i in order])
    assert (shuffled.gallery_ids, shuffled.gallery_hash) == (original.gallery_ids, original.gallery_hash)


def test_gallery_hash_is_first_12_hex_digits_of_sha256_of_sorted_ids():
    references, targets, _ = fashioniq_val("shirt")
    ids = sorted(set(references) | set(targets))
    expected = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:12]
    assert build_retrieval_setup(references, targets).gallery_hash == expected


def test_gallery_hash_differs_between_protocols():
    references, targets, images = fashioniq_val("dress")
    val = build_retrieval_setup(references, targets, protocol="val")
    original = build_retrieval_setup(references, targets, protocol="original", images=images)
    assert val.gallery_hash != original.gallery_hash


def test_standalone_gallery_hash_ignores_order_and_duplicates():
    assert gallery_hash(["b", "a", "b"]) == gallery_hash(["a", "b"])


def test_multiple_targets_per_query_are_all_indexed():
    setup = build_retrieval_setup(["q"], [["x", "y", "x"]], protocol="val")
    ids = setup.gallery_ids
    assert sorted(ids[i] for i in setup.targets[0].tolist() if i >= 0) == ["x", "y"]


def test_reference_absent_from_original_gallery_excludes_nothing():
    setup = build_retrieval_setup(["outside"], ["b"], protocol="original", images=["a", "b"])
    assert setup.exclude.tolist() == [-1]


def test_target_missing_from_original_gallery_raises_by_default():
    with pytest.raises(ValueError, match=r"targets: 1 of 2 queries have no correct target in the 'original'"):
        build_retrieval_setup(["a", "b"], ["b", "gone"], protocol="original", images=["a", "b"])


def test_target_equal_to_reference_raises_by_default():
    with pytest.raises(ValueError, match="no correct target"):
        build_retrieval_setup(["a", "b"], ["b", "b"], protocol="val")


def test_missing_target_counts_as_miss_when_asked():
    # Query 1's only target is outside the gallery: it must lower recall, not vanish.
    setup = build_retrieval_setup(["a", "b"], ["b", "gone"], protocol="original",
                                  images=["a", "b", "c"], missing="miss")
    gallery = torch.eye(3)
    queries = gallery[[1, 2]]  # query 0 finds its target first
    result = recall_at_k(queries, gallery, setup=setup, ks=(1, 3), similarity="dot")
    assert result.recall == {1: 0.5, 3: 0.5}


BAD_INPUTS = {
    "length mismatch": (dict(references=["a", "b"], targets=["c"]), r"targets: expected one entry per query \(len\(references\) = 2\), got 1"),
    "unknown protocol": (dict(protocol="fiq"), "protocol: expected one of"),
    "original without images": (dict(protocol="original"), "images: protocol='original' needs"),
    "val with images": (dict(images=["a"]), "images: only used by protocol='original'"),
    "no queries": (dict(references=[], targets=[]), "references: expected at least one query"),
    "non-string id": (dict(references=["a", 3]), "references: expected string ids, got 3"),
    "targets as one string": (dict(targets="b"), "targets: expected a sequence with one id"),
    "unknown missing policy": (dict(missing="skip"), "missing: expected one of"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    overrides, message = BAD_INPUTS[case]
    kwargs = dict(references=["a", "b"], targets=["b", "c"])
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        build_retrieval_setup(**kwargs)
