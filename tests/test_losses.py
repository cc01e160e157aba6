"""Specification of the pairwise losses: batch classification (softmax) and bidirectional triplet.

Reference values are computed here from the written-out math (explicit log-sum-exp,
brute-force loops over anchor / positive / negative), never by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from valfusion.losses import (
    BatchClassificationLoss,
    BidirectionalTripletLoss,
    batch_classification_loss,
    bidirectional_triplet_loss,
)

# ---------------------------------------------------------------- independent references


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def hand_cross_entropy(query: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """mean_i [ log sum_j exp(<q_i, t_j> / tau) - <q_i, t_i> / tau ], written out per query."""
    q, t = unit_rows(query), unit_rows(target)
    n = q.shape[0]
    total = q.new_zeros(())
    for i in range(n):
        logits = torch.stack([(q[i] * t[j]).sum() / tau for j in range(n)])
        peak = logits.max()
        log_sum_exp = peak + torch.log(torch.exp(logits - peak).sum())
        total = total + log_sum_exp - logits[i]
    return total / n


def brute_force_triplet(a: torch.Tensor, b: torch.Tensor, margin: float, semi_hard: bool):
    """Loop over every (anchor, positive, negative) in both directions, as the docs state it."""
    a, b = unit_rows(a), unit_rows(b)
    n = a.shape[0]
    total = a.new_zeros(())
    for anchors, others in ((a, b), (b, a)):
        for i in range(n):
            d_pos = (anchors[i] - others[i]).pow(2).sum()
            chosen = None
            for k in range(n):
                if k == i:
                    continue
                d_neg = (anchors[i] - others[k]).pow(2).sum()
                if semi_hard and d_neg < d_pos:  # closer than the positive: not semi-hard
                    continue
                if chosen is None or d_neg < chosen:
                    chosen = d_neg
            if chosen is not None:
                total = total + torch.clamp(margin + d_pos - chosen, min=0) / n
    return total


def random_pairs(batch: int, dim: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=dtype), torch.randn(
        batch, dim, generator=g, dtype=dtype
    )


batches = st.integers(min_value=2, max_value=10)
dims = st.integers(min_value=1, max_value=12)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
temperatures = st.floats(min_value=0.05, max_value=2.0)
margins = st.floats(min_value=0.0, max_value=1.5)


# ---------------------------------------------------------------- batch classification


@given(batch=batches, dim=dims, seed=seeds, tau=temperatures)
def test_softmax_form_equals_hand_written_cross_entropy(batch, dim, seed, tau):
    q, t = random_pairs(batch, dim, seed)
    torch.testing.assert_close(
        batch_classification_loss(q, t, tau), hand_cross_entropy(q, t, tau), rtol=1e-10, atol=1e-10
    )


@given(batch=batches, dim=dims, seed=seeds, tau=temperatures)
def test_softmax_gradient_equals_hand_written_cross_entropy_gradient(batch, dim, seed, tau):
    q, t = random_pairs(batch, dim, seed)
    q1, t1 = q.clone().requires_grad_(), t.clone().requires_grad_()
    q2, t2 = q.clone().requires_grad_(), t.clone().requires_grad_()
    batch_classification_loss(q1, t1, tau).backward()
    hand_cross_entropy(q2, t2, tau).backward()
    torch.testing.assert_close((q1.grad, t1.grad), (q2.grad, t2.grad), rtol=1e-9, atol=1e-10)


@given(batch=batches, dim=dims, seed=seeds, perm_seed=seeds)
def test_softmax_is_unchanged_by_permuting_pairs_together(batch, dim, seed, perm_seed):
    q, t = random_pairs(batch, dim, seed)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(perm_seed))
    torch.testing.assert_close(
        batch_classification_loss(q[perm], t[perm]), batch_classification_loss(q, t)
    )


@given(batch=st.integers(2, 16), scale_seed=seeds)
def test_softmax_of_aligned_orthogonal_pairs_at_low_temperature_is_near_zero(batch, scale_seed):
    scales = torch.rand(batch, 1, generator=torch.Generator().manual_seed(scale_seed)) + 0.5
    basis = torch.eye(batch, 16) * scales  # the scale is removed by the normalisation
    assert batch_classification_loss(basis, basis.clone(), temperature=0.01) < 1e-6


def test_softmax_of_aligned_pairs_is_smaller_than_of_shuffled_pairs():
    basis = torch.eye(8, 16)
    aligned = batch_classification_loss(basis, basis, temperature=0.1)
    shuffled = batch_classification_loss(basis, basis.roll(1, dims=0), temperature=0.1)
    assert aligned < shuffled


def test_batch_classification_module_with_fixed_temperature_equals_function():
    q, t = random_pairs(6, 5, seed=1)
    torch.testing.assert_close(
        BatchClassificationLoss(temperature=0.3)(q, t), batch_classification_loss(q, t, 0.3)
    )


def test_fixed_temperature_module_has_no_parameters():
    assert list(BatchClassificationLoss(temperature=0.3).parameters()) == []


def test_learnable_temperature_receives_a_gradient():
    module = BatchClassificationLoss(temperature=0.2, learnable_temperature=True)
    q, t = random_pairs(6, 5, seed=2, dtype=torch.float32)
    module(q, t).backward()
    assert module.logit_scale.grad is not None
    assert module.logit_scale.grad.abs() > 0


def test_learnable_temperature_is_parametrised_as_log_inverse_temperature():
    module = BatchClassificationLoss(temperature=0.2, learnable_temperature=True)
    torch.testing.assert_close(module.logit_scale.detach(), torch.tensor(math.log(1 / 0.2)))


@pytest.mark.parametrize(
    ("outside", "bound"), [(0.001, "min_temperature"), (10.0, "max_temperature")]
)
def test_learnable_temperature_is_clamped_to_its_bounds(outside, bound):
    module = BatchClassificationLoss(
        temperature=0.1, learnable_temperature=True, min_temperature=0.02, max_temperature=0.5
    )
    with torch.no_grad():
        module.logit_scale.fill_(math.log(1 / outside))
    q, t = random_pairs(6, 5, seed=3, dtype=torch.float32)
    loss = module(q, t)
    clamped = getattr(module, bound)
    torch.testing.assert_close(module.temperature, torch.tensor(clamped))
    torch.testing.assert_close(loss, batch_classification_loss(q, t, clamped))


def test_learnable_temperature_outside_its_bounds_at_construction_raises():
    with pytest.raises(ValueError, match=r"temperature: .*\[0.01, 1.0\].*got 5.0"):
        BatchClassificationLoss(temperature=5.0, learnable_temperature=True)


@pytest.mark.parametrize("tau", [0.0, -0.1, math.inf, math.nan])
def test_non_positive_or_non_finite_temperature_raises(tau):
    with pytest.raises(ValueError, match="temperature: expected a positive finite number"):
        batch_classification_loss(torch.randn(3, 4), torch.randn(3, 4), tau)


# ---------------------------------------------------------------- bidirectional triplet


@given(batch=batches, dim=dims, seed=seeds, margin=margins, semi_hard=st.booleans())
# D = 1: unit vectors are exactly +-1, so distances tie exactly (ties count as semi-hard)
@example(batch=6, dim=1, seed=0, margin=0.5, semi_hard=True)
def test_triplet_form_equals_brute_force_loop(batch, dim, seed, margin, semi_hard):
    a, b = random_pairs(batch, dim, seed)
    torch.testing.assert_close(
        bidirectional_triplet_loss(a, b, margin, semi_hard),
        brute_force_triplet(a, b, margin, semi_hard),
        rtol=1e-10,
        atol=1e-10,
    )


@given(batch=batches, dim=st.integers(2, 12), seed=seeds, margin=margins, semi_hard=st.booleans())
def test_triplet_gradient_equals_brute_force_gradient(batch, dim, seed, margin, semi_hard):
    a, b = random_pairs(batch, dim, seed)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    bidirectional_triplet_loss(a1, b1, margin, semi_hard).backward()
    brute_force_triplet(a2, b2, margin, semi_hard).backward()
    torch.testing.assert_close((a1.grad, b1.grad), (a2.grad, b2.grad), rtol=1e-9, atol=1e-10)


@given(batch=batches, dim=dims, seed=seeds, perm_seed=seeds, semi_hard=st.booleans())
def test_triplet_is_unchanged_by_permuting_pairs_together(batch, dim, seed, perm_seed, semi_hard):
    a, b = random_pairs(batch, dim, seed)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(perm_seed))
    torch.testing.assert_close(
        bidirectional_triplet_loss(a[perm], b[perm], semi_hard=semi_hard),
        bidirectional_triplet_loss(a, b, semi_hard=semi_hard),
    )


@pytest.mark.parametrize("semi_hard", [True, False])
def test_triplet_of_aligned_orthogonal_pairs_with_margin_met_is_exactly_zero(semi_hard):
    basis = torch.eye(8, 16) * torch.linspace(0.5, 2.0, 8)[:, None]
    # d_pos = 0 and every d_neg = 2 > margin 0.2
    assert bidirectional_triplet_loss(basis, basis.clone(), 0.2, semi_hard) == 0


def test_anchor_without_semi_hard_negative_contributes_zero_but_counts_in_the_mean():
    # Squared distances: d(a0, b0) = 4, d(a1, b1) = 0, every cross pair = 2.
    # a0 and b0 (positive at 4, only negative at 2, closer) have no semi-hard negative: 0.
    # a1 and b1 (positive at 0, negative at 2): hinge(3 + 0 - 2) = 1 each.
    # Mean over all N = 2 anchors per direction: 1/2 + 1/2 = 1 (it would be 2 if the
    # anchors without a negative were left out of the mean).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    assert bidirectional_triplet_loss(a, b, margin=3.0) == pytest.approx(1.0)


def test_hardest_negative_ignores_the_semi_hard_condition():
    # Same batch: a0 and b0 now take their closer negative (d = 2): hinge(3 + 4 - 2) = 5 each;
    # a1 and b1 as before: 1 each. Total (5 + 1) / 2 + (5 + 1) / 2 = 6.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    assert bidirectional_triplet_loss(a, b, margin=3.0, semi_hard=False) == pytest.approx(6.0)


def test_ties_with_the_positive_count_as_semi_hard_so_a_collapsed_batch_costs_twice_the_margin():
    zeros = torch.zeros(5, 3)  # every distance is exactly 0
    assert bidirectional_triplet_loss(zeros, zeros, margin=0.2) == pytest.approx(0.4)


def test_triplet_module_equals_function():
    a, b = random_pairs(6, 5, seed=4)
    module = BidirectionalTripletLoss(margin=0.3, semi_hard=False)
    torch.testing.assert_close(module(a, b), bidirectional_triplet_loss(a, b, 0.3, False))


def test_triplet_module_has_no_parameters():
    assert list(BidirectionalTripletLoss().parameters()) == []


@pytest.mark.parametrize("margin", [-0.1, math.inf])
def test_negative_or_infinite_margin_raises(margin):
    with pytest.raises(ValueError, match="margin: expected a non-negative finite number"):
        BidirectionalTripletLoss(margin=margin)


# ---------------------------------------------------------------- both forms: shared contract

LOSSES = {
    "softmax": lambda x, y: batch_classification_loss(x, y, 0.1),
    "triplet": lambda x, y: bidirectional_triplet_loss(x, y, 0.2, True),
    "triplet_hardest": lambda x, y: bidirectional_triplet_loss(x, y, 0.2, False),
}
FORMS = sorted(LOSSES)
FIRST_ARG = {"softmax": "query", "triplet": "a", "triplet_hardest": "a"}
SECOND_ARG = {"softmax": "target", "triplet": "b", "triplet_hardest": "b"}


@pytest.mark.parametrize("form", FORMS)
def test_batch_of_one_pair_raises_because_it_has_no_negatives(form):
    with pytest.raises(ValueError, match=r"batch of one pair has no negatives.*\(1, 4\)"):
        LOSSES[form](torch.randn(1, 4), torch.randn(1, 4))


@pytest.mark.parametrize("form", FORMS)
def test_mismatched_batch_sizes_raise_naming_both_shapes(form):
    with pytest.raises(ValueError, match=rf"{SECOND_ARG[form]}: batch size 4.*\(4, 8\).*\(3, 8\)"):
        LOSSES[form](torch.randn(3, 8), torch.randn(4, 8))


@pytest.mark.parametrize("form", FORMS)
def test_mismatched_embedding_sizes_raise_naming_the_shape(form):
    with pytest.raises(ValueError, match=rf"{SECOND_ARG[form]}: expected embedding size D.*\(3, 7\)"):
        LOSSES[form](torch.randn(3, 8), torch.randn(3, 7))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(8,), (2, 3, 8)])
def test_wrong_rank_raises_naming_the_expected_layout_and_the_shape(form, shape):
    bad = torch.randn(shape)
    pattern = rf"{FIRST_ARG[form]}: expected a 2-D tensor \(B, D\), got shape \({', '.join(map(str, shape))}"
    with pytest.raises(ValueError, match=pattern):
        LOSSES[form](bad, torch.randn(2, 8))


@pytest.mark.parametrize("form", FORMS)
def test_integer_embeddings_raise(form):
    with pytest.raises(ValueError, match=rf"{FIRST_ARG[form]}: expected a floating-point tensor"):
        LOSSES[form](torch.ones(3, 4, dtype=torch.long), torch.randn(3, 4))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(form, dtype):
    q, t = random_pairs(7, 16, seed=5, dtype=torch.float32)
    q, t = q.to(dtype), t.to(dtype)
    loss = LOSSES[form](q, t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, LOSSES[form](q.float(), t.float()), rtol=0, atol=0)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extreme_inputs_give_finite_loss_and_gradients(form, dtype):
    big = torch.finfo(dtype).max / 2
    q = (torch.randn(6, 32) * big).clamp(-big, big).to(dtype).requires_grad_()
    t = torch.full((6, 32), torch.finfo(dtype).tiny, dtype=dtype).requires_grad_()
    loss = LOSSES[form](q, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("form", FORMS)
def test_identical_embeddings_give_finite_loss_and_gradients(form):
    row = torch.randn(1, 12)
    q = row.repeat(5, 1).requires_grad_()
    t = row.repeat(5, 1).requires_grad_()
    loss = LOSSES[form](q, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("form", FORMS)
def test_zero_embeddings_give_finite_loss_and_gradients(form):
    q = torch.zeros(4, 6, requires_grad=True)
    t = torch.zeros(4, 6, requires_grad=True)
    loss = LOSSES[form](q, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("form", FORMS)
def test_gather_without_an_initialised_process_group_uses_the_local_batch(form):
    q, t = random_pairs(5, 4, seed=6)
    fn = {
        "softmax": lambda g: batch_classification_loss(q, t, 0.1, gather=g),
        "triplet": lambda g: bidirectional_triplet_loss(q, t, 0.2, True, gather=g),
        "triplet_hardest": lambda g: bidirectional_triplet_loss(q, t, 0.2, False, gather=g),
    }[form]
    torch.testing.assert_close(fn(True), fn(False), rtol=0, atol=0)
