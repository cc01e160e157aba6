"""Specification of HierarchicalMatchingLoss: per-level terms, the semantic term, their sum."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from valfusion.losses import (
    BatchClassificationLoss,
    BidirectionalTripletLoss,
    HierarchicalMatchingLoss,
    HierarchicalMatchingOutput,
    batch_classification_loss,
    bidirectional_triplet_loss,
)


def random_levels(batch: int, dims: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    composed = [torch.randn(batch, d, generator=g, dtype=torch.float64) for d in dims]
    targets = [torch.randn(batch, d, generator=g, dtype=torch.float64) for d in dims]
    semantic = torch.randn(batch, 7, generator=g, dtype=torch.float64)
    side_info = torch.randn(batch, 7, generator=g, dtype=torch.float64)
    return composed, targets, semantic, side_info


PAIRWISE = {
    "softmax": lambda x, y: batch_classification_loss(x, y, temperature=0.25),
    "triplet": lambda x, y: bidirectional_triplet_loss(x, y, margin=0.3, semi_hard=True),
}


def make_loss(form: str, **kwargs) -> HierarchicalMatchingLoss:
    return HierarchicalMatchingLoss(form=form, temperature=0.25, margin=0.3, **kwargs)


@pytest.mark.parametrize("form", ["softmax", "triplet"])
@given(
    batch=st.integers(2, 8),
    weights=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=4),
    semantic_weight=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_total_is_the_weighted_sum_of_independently_computed_terms(
    form, batch, weights, semantic_weight, seed
):
    dims = [3 + 2 * level for level in range(len(weights))]
    composed, targets, semantic, side_info = random_levels(batch, dims, seed)
    loss = make_loss(form, level_weights=weights, semantic_weight=semantic_weight)
    out = loss(composed, targets, semantic, side_info)

    expected_levels = [PAIRWISE[form](c, t) for c, t in zip(composed, targets)]
    expected_semantic = PAIRWISE[form](semantic, side_info)
    expected_total = sum(w * term for w, term in zip(weights, expected_levels))
    expected_total = expected_total + semantic_weight * expected_semantic
    torch.testing.assert_close(out.levels, tuple(expected_levels))
    torch.testing.assert_close(out.semantic, expected_semantic)
    torch.testing.assert_close(out.total, expected_total)


@pytest.mark.parametrize("form", ["softmax", "triplet"])
def test_without_side_information_semantic_is_none_and_total_is_the_level_sum(form):
    composed, targets, _, _ = random_levels(5, [4, 6, 8], seed=0)
    out = make_loss(form)(composed, targets)
    assert out.semantic is None
    expected = sum(PAIRWISE[form](c, t) for c, t in zip(composed, targets))
    torch.testing.assert_close(out.total, expected)


def test_output_is_a_dataclass_with_one_term_per_level():
    composed, targets, semantic, side_info = random_levels(4, [4, 6, 8], seed=1)
    out = make_loss("softmax")(composed, targets, semantic, side_info)
    assert isinstance(out, HierarchicalMatchingOutput)
    assert len(out.levels) == 3
    assert all(term.shape == () for term in (out.total, *out.levels, out.semantic))


@pytest.mark.parametrize("form", ["softmax", "triplet"])
@given(batch=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_permuting_pairs_together_leaves_every_term_unchanged(form, batch, seed):
    composed, targets, semantic, side_info = random_levels(batch, [3, 5], seed)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed + 1))
    loss = make_loss(form, level_weights=[0.5, 2.0])
    out = loss(composed, targets, semantic, side_info)
    permuted = loss(
        [c[perm] for c in composed], [t[perm] for t in targets], semantic[perm], side_info[perm]
    )
    torch.testing.assert_close(
        (permuted.total, permuted.levels, permuted.semantic), (out.total, out.levels, out.semantic)
    )


def test_form_selects_the_pairwise_module():
    assert isinstance(HierarchicalMatchingLoss("softmax").pairwise, BatchClassificationLoss)
    assert isinstance(HierarchicalMatchingLoss("triplet").pairwise, BidirectionalTripletLoss)


def test_learnable_temperature_is_shared_by_all_terms_and_receives_a_gradient():
    loss = HierarchicalMatchingLoss("softmax", learnable_temperature=True)
    assert [name for name, _ in loss.named_parameters()] == ["pairwise.logit_scale"]
    composed, targets, semantic, side_info = random_levels(4, [4, 6], seed=2)
    loss(composed, targets, semantic, side_info).total.backward()
    assert loss.pairwise.logit_scale.grad.abs() > 0


def test_half_precision_levels_give_a_finite_float32_total():
    composed, targets, semantic, side_info = random_levels(4, [4, 6], seed=3)
    half = lambda xs: [x.half() for x in xs]  # noqa: E731
    out = make_loss("triplet")(half(composed), half(targets), semantic.bfloat16(), side_info.half())
    assert out.total.dtype == torch.float32
    assert torch.isfinite(out.total)


# ---------------------------------------------------------------- bad inputs


def test_batch_of_one_pair_raises():
    composed, targets, _, _ = random_levels(1, [4, 6], seed=4)
    with pytest.raises(ValueError, match="batch of one pair has no negatives"):
        make_loss("softmax")(composed, targets)


def test_mismatched_level_counts_raise_naming_both_counts_and_shapes():
    composed, targets, _, _ = random_levels(3, [4, 6], seed=5)
    with pytest.raises(
        ValueError, match=r"targets: expected one tensor per level of composed \(2 levels\), got 1"
    ):
        make_loss("softmax")(composed, targets[:1])


def test_level_count_different_from_level_weights_raises():
    composed, targets, _, _ = random_levels(3, [4, 6], seed=6)
    with pytest.raises(
        ValueError, match=r"composed: level_weights has 3 entries but composed has 2 levels"
    ):
        make_loss("softmax", level_weights=[1.0, 1.0, 1.0])(composed, targets)


def test_mismatched_batch_sizes_between_levels_raise_naming_the_level_and_shapes():
    composed, targets, _, _ = random_levels(3, [4, 6], seed=7)
    composed[1], targets[1] = composed[1][:2], targets[1][:2]
    with pytest.raises(ValueError, match=r"composed\[1\]: batch size 2 \(shape \(2, 6\)\)"):
        make_loss("softmax")(composed, targets)


def test_mismatched_pair_within_a_level_raises_naming_the_level():
    composed, targets, _, _ = random_levels(3, [4, 6], seed=8)
    targets[1] = targets[1][:, :5]
    with pytest.raises(ValueError, match=r"targets\[1\]: expected embedding size D.*\(3, 5\)"):
        make_loss("triplet")(composed, targets)


def test_wrong_rank_level_raises_naming_the_level_and_shape():
    composed, targets, _, _ = random_levels(3, [4, 6], seed=9)
    composed[0] = composed[0][:, :, None]
    with pytest.raises(ValueError, match=r"composed\[0\]: expected a 2-D tensor \(B, D\).*\(3, 4, 1\)"):
        make_loss("softmax")(composed, targets)


def test_a_single_tensor_instead_of_a_sequence_of_levels_raises():
    composed, targets, _, _ = random_levels(3, [4], seed=10)
    with pytest.raises(ValueError, match=r"composed: expected a sequence .* got a single tensor of shape \(3, 4\)"):
        make_loss("softmax")(composed[0], targets)


def test_empty_level_sequence_raises():
    with pytest.raises(ValueError, match="composed: expected a non-empty sequence"):
        make_loss("softmax")([], [])


def test_composed_semantic_without_side_info_raises():
    composed, targets, semantic, _ = random_levels(3, [4], seed=11)
    with pytest.raises(ValueError, match="side_info: required when composed_semantic is given"):
        make_loss("softmax")(composed, targets, semantic, None)


def test_side_info_without_composed_semantic_raises():
    composed, targets, _, side_info = random_levels(3, [4], seed=12)
    with pytest.raises(ValueError, match="composed_semantic: required when side_info is given"):
        make_loss("softmax")(composed, targets, None, side_info)


def test_semantic_batch_different_from_levels_raises_naming_both_shapes():
    composed, targets, semantic, side_info = random_levels(3, [4], seed=13)
    with pytest.raises(
        ValueError, match=r"composed_semantic: batch size 2 \(shape \(2, 7\)\).*\(3, 4\)"
    ):
        make_loss("softmax")(composed, targets, semantic[:2], side_info[:2])


def test_unknown_form_raises():
    with pytest.raises(ValueError, match=r"form: expected one of \('softmax', 'triplet'\), got 'cosine'"):
        HierarchicalMatchingLoss(form="cosine")


def test_negative_level_weight_raises_naming_the_level():
    with pytest.raises(ValueError, match=r"level_weights\[1\]: expected a non-negative"):
        HierarchicalMatchingLoss(level_weights=[1.0, -1.0])


def test_negative_semantic_weight_raises():
    with pytest.raises(ValueError, match="semantic_weight: expected a non-negative"):
        HierarchicalMatchingLoss(semantic_weight=-0.5)


def test_learnable_temperature_with_triplet_form_raises():
    with pytest.raises(ValueError, match="learnable_temperature: only the softmax form"):
        HierarchicalMatchingLoss(form="triplet", learnable_temperature=True)
