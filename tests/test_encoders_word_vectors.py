"""Specification of load_word_vectors on small GloVe-format files written by the tests."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from valfusion.encoders import LSTMTextEncoder, Vocabulary, load_word_vectors

VECTORS = {
    "the": [0.5, -0.5, 1.0],
    "red": [0.1, 0.2, 0.3],
    "zebra": [9.0, 9.0, 9.0],
    "blue": [-1.5, 2.25, 0.0],
}


def write_glove(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def glove(tmp_path) -> str:
    lines = [f"{word} " + " ".join(repr(v) for v in values) for word, values in VECTORS.items()]
    return write_glove(tmp_path / "glove.txt", lines)


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(["red", "green", "blue", "shirt"])


def test_vectors_land_in_the_rows_of_their_tokens(glove, vocab):
    result = load_word_vectors(glove, vocab)
    assert result.weights.shape == (len(vocab), 3)
    for word in ("red", "blue"):
        torch.testing.assert_close(
            result.weights[vocab.token_to_id(word)], torch.tensor(VECTORS[word])
        )


def test_found_counts_vocabulary_tokens_present_in_the_file(glove, vocab):
    result = load_word_vectors(glove, vocab)
    assert result.found == 2
    assert result.missing == ("green", "shirt")
    assert result.coverage == pytest.approx(2 / 4)


def test_rows_without_a_vector_are_zero_when_no_embedding_is_given(glove, vocab):
    weights = load_word_vectors(glove, vocab).weights
    for token in ("<pad>", "<unk>", "green", "shirt"):
        assert torch.count_nonzero(weights[vocab.token_to_id(token)]) == 0, token


def test_embedding_rows_of_found_tokens_are_overwritten_and_others_kept(glove, vocab):
    embedding = nn.Embedding(len(vocab), 3, padding_idx=0)
    before = embedding.weight.detach().clone()
    result = load_word_vectors(glove, vocab, embedding)
    red, green = vocab.token_to_id("red"), vocab.token_to_id("green")
    torch.testing.assert_close(embedding.weight[red].detach(), torch.tensor(VECTORS["red"]))
    torch.testing.assert_close(embedding.weight[green].detach(), before[green])
    torch.testing.assert_close(result.weights, embedding.weight.detach())


def test_text_encoder_embedding_can_be_initialised_in_place(glove, vocab):
    encoder = LSTMTextEncoder(len(vocab), word_dim=3, hidden_dim=4, out_dim=2)
    load_word_vectors(glove, vocab, encoder.embedding)
    blue = vocab.token_to_id("blue")
    torch.testing.assert_close(
        encoder.embedding.weight[blue].detach(), torch.tensor(VECTORS["blue"])
    )


def test_dimension_mismatch_names_file_and_line(tmp_path, vocab):
    path = write_glove(tmp_path / "bad.txt", ["red 0.1 0.2 0.3", "blue 0.1 0.2", "green 1 2 3"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:")):
        load_word_vectors(path, vocab)


def test_extra_number_on_a_line_is_a_dimension_mismatch(tmp_path, vocab):
    path = write_glove(tmp_path / "bad.txt", ["red 0.1 0.2 0.3", "the 1 2 3", "blue 1 2 3 4"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: dimension mismatch")):
        load_word_vectors(path, vocab)


def test_non_numeric_value_names_file_and_line(tmp_path, vocab):
    path = write_glove(tmp_path / "bad.txt", ["red 0.1 0.2 0.3", "blue 0.1 oops 0.3"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:")):
        load_word_vectors(path, vocab)


def test_embedding_dimension_different_from_file_names_file_and_line(glove, vocab):
    with pytest.raises(ValueError, match=re.escape(f"{glove}:1:")):
        load_word_vectors(glove, vocab, nn.Embedding(len(vocab), 4))


def test_embedding_with_wrong_vocabulary_size_raises(glove, vocab):
    with pytest.raises(ValueError, match=r"^embedding:"):
        load_word_vectors(glove, vocab, nn.Embedding(len(vocab) + 1, 3))


def test_word2vec_header_line_is_read_as_count_and_dimension(tmp_path, vocab):
    path = write_glove(tmp_path / "w2v.txt", ["2 3", "red 1 2 3", "shirt 4 5 6"])
    result = load_word_vectors(path, vocab)
    assert result.found == 2
    torch.testing.assert_close(
        result.weights[vocab.token_to_id("shirt")], torch.tensor([4.0, 5.0, 6.0])
    )


def test_first_occurrence_of_a_duplicated_word_wins(tmp_path, vocab):
    path = write_glove(tmp_path / "dup.txt", ["red 1 1 1", "red 2 2 2"])
    weights = load_word_vectors(path, vocab).weights
    torch.testing.assert_close(weights[vocab.token_to_id("red")], torch.ones(3))


def test_words_containing_spaces_are_read_without_error(tmp_path, vocab):
    path = write_glove(tmp_path / "cased.txt", ["red 1 1 1", ". . . 7 7 7", "blue 2 2 2"])
    result = load_word_vectors(path, vocab)
    assert result.found == 2


def test_empty_file_raises(tmp_path, vocab):
    path = write_glove(tmp_path / "empty.txt", [])
    with pytest.raises(ValueError, match="no word vectors"):
        load_word_vectors(path, vocab)
