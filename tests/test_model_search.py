"""``VAL.search``: the package's one ranking rule, finite inputs only, a warning for unknown texts."""

from __future__ import annotations

import warnings
from itertools import pairwise

import pytest
import torch

from valfusion.encoders import Vocabulary
from valfusion.metrics import recall_at_k
from valfusion.models import VAL, VALConfig

VOCAB = Vocabulary.from_texts(["make it red", "make it blue"])
SIZE = 32


@pytest.fixture(scope="module")
def model() -> VAL:
    torch.manual_seed(0)
    config = VALConfig(
        vocab_size=len(VOCAB), backbone_channels=(4, 8, 8), image_size=SIZE,
        word_dim=8, text_hidden_dim=8, text_dim=8,
    )
    return VAL(config, vocabulary=VOCAB).eval()


def query_embedding(model: VAL, image: torch.Tensor, text: str) -> torch.Tensor:
    tokens, lengths = VOCAB.encode([text])
    with torch.no_grad():
        return model.compose(image[None], tokens, lengths)


def tied_gallery(model: VAL) -> torch.Tensor:
    """Items with equal cosine to any query: exact copies and positive multiples of two vectors.

    Multiples tie in exact arithmetic; in floating point their scores differ by a few ulps
    or not at all, depending on how the score is computed, so only one shared computation
    of scores and one tie rule rank them the same everywhere.
    """
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, model.embedding_dim, generator=generator)
    scales = (1.0, 3.0, 0.1, 1.0, 7.0, 0.3, 1.0, 11.0, 1 / 3, 5.0)
    return torch.stack([s * v for s in scales for v in (a, b)])


def test_search_breaks_ties_like_recall_at_k(model):
    image = torch.rand(3, SIZE, SIZE)
    gallery = tied_gallery(model)
    size = gallery.shape[0]
    query = query_embedding(model, image, "make it red")
    expected = recall_at_k(query, gallery, targets=[0], ks=(size,)).topk_indices[0]
    found = model.search(image, "make it red", gallery, k=size).indices
    assert found.tolist() == expected.tolist()


def test_search_with_an_excluded_item_breaks_ties_like_recall_at_k(model):
    image = torch.rand(3, SIZE, SIZE)
    gallery = tied_gallery(model)
    size = gallery.shape[0]
    query = query_embedding(model, image, "make it blue")
    expected = recall_at_k(query, gallery, targets=[0], exclude=[6], ks=(size - 1,)).topk_indices[0]
    found = model.search(image, "make it blue", gallery, k=size, exclude=6).indices
    assert found.tolist() == expected.tolist()
    assert 6 not in found.tolist()


def test_equal_scores_are_listed_lower_index_first(model):
    # Exact copies need not score bit-equal (a GEMM may round rows differently); the rule
    # is about the scores as computed: equal scores go by gallery index.
    gallery = torch.cat([tied_gallery(model), torch.randn(1, model.embedding_dim).repeat(6, 1)])
    result = model.search(torch.rand(3, SIZE, SIZE), "make it red", gallery, k=len(gallery))
    pairs = list(zip(result.scores.tolist(), result.indices.tolist()))
    assert any(a[0] == b[0] for a, b in pairwise(pairs)), "the gallery should produce ties"
    for (score, index), (next_score, next_index) in pairwise(pairs):
        assert score > next_score or (score == next_score and index < next_index)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_search_rejects_a_non_finite_query_image(model, bad):
    image = torch.rand(3, SIZE, SIZE)
    image[1, 4, 5] = bad
    with pytest.raises(ValueError, match=r"image: expected finite values"):
        model.search(image, "make it red", torch.randn(4, model.embedding_dim))


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_search_rejects_non_finite_gallery_embeddings_naming_the_row(model, bad):
    gallery = torch.randn(4, model.embedding_dim)
    gallery[2, 3] = bad
    with pytest.raises(ValueError, match=r"gallery: expected finite values.*row 2"):
        model.search(torch.rand(3, SIZE, SIZE), "make it red", gallery)


def test_search_rejects_non_finite_gallery_images_naming_the_row(model):
    gallery = torch.rand(3, 3, SIZE, SIZE)
    gallery[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"gallery: expected finite values.*row 1"):
        model.search(torch.rand(3, SIZE, SIZE), "make it red", gallery)


@pytest.mark.parametrize("text", ["zebra quokka", "ZEBRA!"])
def test_search_warns_when_every_word_of_the_text_is_unknown(model, text):
    with pytest.warns(UserWarning, match="unknown") as record:
        model.search(torch.rand(3, SIZE, SIZE), text, torch.randn(4, model.embedding_dim))
    assert any(repr(text) in str(w.message) for w in record)


def test_search_warns_for_a_text_without_words(model):
    with pytest.warns(UserWarning, match="no words"):
        model.search(torch.rand(3, SIZE, SIZE), " ", torch.randn(4, model.embedding_dim))


def test_search_warns_for_tokens_that_are_all_unknown(model):
    tokens, lengths = VOCAB.encode(["zebra quokka"])
    with pytest.warns(UserWarning, match="unknown"):
        model.search(torch.rand(3, SIZE, SIZE), (tokens, lengths), torch.randn(4, model.embedding_dim))


@pytest.mark.parametrize("text", ["make it red", "make the zebra blue"])
def test_search_does_not_warn_when_a_word_is_known(model, text):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = model.search(torch.rand(3, SIZE, SIZE), text, torch.randn(4, model.embedding_dim))
    assert [str(w.message) for w in caught] == []
    assert found.indices.numel() > 0
