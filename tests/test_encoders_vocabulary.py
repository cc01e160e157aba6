"""Specification of the tokenizer and the vocabulary (ids, encode/decode, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from valfusion.encoders import Vocabulary, tokenize
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS

WORDS = ["red", "blue", "shirt", "longer", "sleeves", "is", "more", "a"]


# --- tokenize ---------------------------------------------------------------------------


def test_tokenize_lowercases_words():
    assert tokenize("Is RED Shirt") == ["is", "red", "shirt"]


def test_tokenize_splits_punctuation_into_separate_tokens():
    assert tokenize("red,blue!(shorter)") == ["red", ",", "blue", "!", "(", "shorter", ")"]


def test_tokenize_keeps_digits_and_non_ascii_letters_inside_words():
    assert tokenize("Größe 42 café") == ["größe", "42", "café"]


def test_tokenize_of_blank_text_is_empty():
    assert tokenize("  \t\n ") == []


@given(st.text(max_size=40))
def test_tokenize_loses_only_whitespace(text):
    tokens = tokenize(text)
    assert all(token and not any(c.isspace() for c in token) for token in tokens)
    assert "".join(tokens) == "".join(text.lower().split())


def test_tokenize_rejects_non_string():
    with pytest.raises(ValueError, match="text"):
        tokenize(["red"])


# --- building ---------------------------------------------------------------------------


def test_pad_and_unk_have_distinct_fixed_ids():
    vocab = Vocabulary.from_texts(["red shirt"])
    assert (vocab.pad_id, vocab.unk_id) == (0, 1)
    assert vocab.tokens[0] == "<pad>" and vocab.tokens[1] == "<unk>"


def test_from_texts_drops_tokens_rarer_than_min_count():
    texts = ["red shirt", "red dress", "red shirt", "blue"]
    vocab = Vocabulary.from_texts(texts, min_count=2)
    assert set(vocab.tokens[2:]) == {"red", "shirt"}


def test_from_texts_orders_by_count_then_alphabetically():
    vocab = Vocabulary.from_texts(["b a c", "c b", "c"])
    assert vocab.tokens[2:] == ("c", "b", "a")


def test_len_counts_special_tokens():
    assert len(Vocabulary.from_texts(["red shirt red"])) == 4


@pytest.mark.parametrize("min_count", [0, -1, 1.5, True])
def test_from_texts_rejects_non_positive_min_count(min_count):
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.from_texts(["red"], min_count=min_count)


@pytest.mark.parametrize("tokens", [["red", "red"], ["red", "<pad>"], ["<unk>"], ["red", ""]])
def test_constructor_rejects_duplicate_special_or_empty_tokens(tokens):
    with pytest.raises(ValueError, match="tokens"):
        Vocabulary(tokens)


# --- encode / decode --------------------------------------------------------------------


def test_unknown_word_encodes_to_unk_not_pad():
    vocab = Vocabulary(["red"])
    ids, _ = vocab.encode(["red zebra"])
    assert ids.tolist() == [[2, vocab.unk_id]]
    assert vocab.unk_id != vocab.pad_id


@given(
    st.lists(st.lists(st.sampled_from([*WORDS, "zebra", ","]), max_size=7), min_size=1, max_size=5)
)
def test_encode_rows_hold_token_ids_then_padding(word_lists):
    vocab = Vocabulary(WORDS)
    texts = [" ".join(words) for words in word_lists]
    ids, lengths = vocab.encode(texts)
    assert ids.dtype == torch.long and lengths.dtype == torch.long
    assert ids.shape == (len(texts), int(lengths.max()))
    for row, length, words in zip(ids.tolist(), lengths.tolist(), word_lists):
        expected = [WORDS.index(w) + 2 if w in WORDS else 1 for w in words] or [1]
        assert length == len(expected)
        assert row[:length] == expected
        assert row[length:] == [0] * (len(row) - length)


def test_empty_text_encodes_as_single_unk_of_length_one():
    vocab = Vocabulary(WORDS)
    ids, lengths = vocab.encode(["", "red"])
    assert lengths.tolist() == [1, 1]
    assert ids.tolist() == [[vocab.unk_id], [2]]


def test_max_length_keeps_the_first_tokens():
    vocab = Vocabulary(WORDS)
    ids, lengths = vocab.encode(["red blue shirt longer", "is"], max_length=2)
    assert ids.tolist() == [[2, 3], [7, 0]]
    assert lengths.tolist() == [2, 1]


@given(
    st.lists(
        st.lists(st.sampled_from([*WORDS, "zebra"]), min_size=1, max_size=6), min_size=1, max_size=4
    )
)
def test_decode_inverts_encode_up_to_unknown_words(word_lists):
    vocab = Vocabulary(WORDS)
    texts = [" ".join(words) for words in word_lists]
    expected = [" ".join(w if w in WORDS else "<unk>" for w in words) for words in word_lists]
    assert vocab.decode(*vocab.encode(texts)) == expected
    assert vocab.decode(vocab.encode(texts).ids) == expected


def test_encode_rejects_a_bare_string():
    with pytest.raises(ValueError, match="texts"):
        Vocabulary(WORDS).encode("red shirt")


def test_encode_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="texts"):
        Vocabulary(WORDS).encode([])


def test_encode_rejects_non_positive_max_length():
    with pytest.raises(ValueError, match="max_length"):
        Vocabulary(WORDS).encode(["red"], max_length=0)


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="ids"):
        Vocabulary(WORDS).decode(torch.tensor([[2, 99]]))


# --- persistence ------------------------------------------------------------------------


def test_json_round_trip_preserves_ids(tmp_path):
    vocab = Vocabulary.from_texts(["Is red, with longer sleeves", "is blue"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    texts = ["is red with a zebra"]
    assert torch.equal(loaded.encode(texts).ids, vocab.encode(texts).ids)


def test_saved_file_is_plain_json_listing_the_tokens(tmp_path):
    path = tmp_path / "vocab.json"
    Vocabulary(["red", "café"]).save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["tokens"] == ["red", "café"]


def test_failed_save_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "vocab.json"
    Vocabulary(["red"]).save(path)
    before = path.read_bytes()
    # A lone surrogate cannot be encoded as UTF-8, so the write fails half-way.
    with pytest.raises(UnicodeEncodeError):
        Vocabulary(["blue", "\ud800"]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "vocab.json"
    Vocabulary(["red"]).save(path)
    Vocabulary(["blue", "green"]).save(path)
    assert Vocabulary.load(path) == Vocabulary(["blue", "green"])


def test_load_rejects_json_that_is_not_a_vocabulary(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"tokens": ["red"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.json"):
        Vocabulary.load(path)


# --- the token cap ----------------------------------------------------------------------

FASHIONIQ_CAPTIONS = Path(__file__).parent / "fixtures" / "fashioniq" / "captions"


def test_a_100000_character_caption_is_capped_at_the_default_max_tokens():
    vocab = Vocabulary(WORDS)
    long_text = "red " * 25_000  # 100,000 characters, 25,000 tokens
    with pytest.warns(UserWarning, match="max_tokens"):
        ids, lengths = vocab.encode([long_text, "blue"])
    assert lengths.tolist() == [DEFAULT_MAX_TOKENS, 1]
    assert ids.shape == (2, DEFAULT_MAX_TOKENS)
    assert ids[0].tolist() == [2] * DEFAULT_MAX_TOKENS


def test_the_cap_keeps_the_first_tokens():
    vocab = Vocabulary(WORDS, max_tokens=3)
    with pytest.warns(UserWarning):
        ids, lengths = vocab.encode(["red blue shirt longer sleeves"])
    assert ids.tolist() == [[2, 3, 4]] and lengths.tolist() == [3]


def test_truncated_texts_are_counted_on_the_vocabulary():
    vocab = Vocabulary(WORDS, max_tokens=2)
    assert vocab.truncated_texts == 0
    with pytest.warns(UserWarning):
        vocab.encode(["red blue shirt", "red", "is more a"])
    vocab.encode(["red blue"])  # exactly at the cap: not truncated
    assert vocab.truncated_texts == 2


def test_the_first_truncation_warns_naming_how_many_texts_were_cut():
    vocab = Vocabulary(WORDS, max_tokens=2)
    with pytest.warns(UserWarning, match=r"2 of 3 texts .* more than max_tokens=2 .* longest has 4"):
        vocab.encode(["red blue shirt", "red", "is more a sleeves"])


def test_a_text_at_or_under_the_cap_encodes_without_warning(recwarn):
    Vocabulary(WORDS, max_tokens=2).encode(["red blue", "is"])
    assert not [w for w in recwarn if "max_tokens" in str(w.message)]


def test_max_tokens_none_keeps_every_token():
    vocab = Vocabulary(WORDS, max_tokens=None)
    _, lengths = vocab.encode(["red " * 200])
    assert lengths.tolist() == [200] and vocab.truncated_texts == 0


def test_max_length_overrides_max_tokens_for_one_call_without_warning(recwarn):
    vocab = Vocabulary(WORDS, max_tokens=2)
    _, lengths = vocab.encode(["red blue shirt longer"], max_length=3)
    assert lengths.tolist() == [3] and vocab.truncated_texts == 1
    assert not [w for w in recwarn if "max_tokens" in str(w.message)]


@pytest.mark.parametrize("max_tokens", [0, -4, 2.5, True, "64"])
def test_max_tokens_rejects_non_positive_or_non_integer_values(max_tokens):
    with pytest.raises(ValueError, match=r"max_tokens: expected a positive integer or None"):
        Vocabulary(WORDS, max_tokens=max_tokens)


def test_from_texts_warns_how_many_training_texts_exceed_the_cap():
    texts = ["red blue", "red blue shirt longer", "is a"]
    with pytest.warns(UserWarning, match=r"1 of 3 texts .* more than max_tokens=3 .* longest has 4"):
        vocab = Vocabulary.from_texts(texts, max_tokens=3)
    assert vocab.max_tokens == 3


def test_max_tokens_survives_a_save_and_load(tmp_path):
    path = tmp_path / "vocab.json"
    Vocabulary(WORDS, max_tokens=7).save(path)
    assert Vocabulary.load(path).max_tokens == 7


def test_a_file_without_max_tokens_loads_with_the_default(tmp_path):
    path = tmp_path / "vocab.json"
    data = Vocabulary(WORDS).to_dict()
    del data["max_tokens"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert Vocabulary.load(path).max_tokens == DEFAULT_MAX_TOKENS


def test_the_default_cap_truncates_no_real_fashioniq_query():
    pairs = [
        pair["captions"]
        for path in sorted(FASHIONIQ_CAPTIONS.glob("cap.*.val.json"))
        for pair in json.loads(path.read_text(encoding="utf-8"))
    ]
    # both caption modes: each caption alone, and a pair's captions joined with " and "
    texts = [c for captions in pairs for c in captions]
    texts += [" and ".join(c for c in captions if c.strip()) for captions in pairs]
    longest = max(len(tokenize(text)) for text in texts)
    assert 0 < longest <= DEFAULT_MAX_TOKENS


def test_vocabularies_with_different_caps_are_not_equal():
    assert Vocabulary(WORDS, max_tokens=5) != Vocabulary(WORDS)
    assert Vocabulary(WORDS, max_tokens=5) == Vocabulary(WORDS, max_tokens=5)
