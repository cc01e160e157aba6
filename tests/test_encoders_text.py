"""Specification of the text-encoder interface, the LSTM as one, and the spec strings."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from valfusion.encoders import (
    TEXT_ENCODER_KINDS,
    LSTMTextEncoder,
    TextEncoder,
    TextEncoderSpec,
    Vocabulary,
    build_text_encoder,
    parse_text_encoder_spec,
)

TEXTS = ["make it red", "add a blue circle", "is red and not blue"]
SIZES = {"word_dim": 6, "hidden_dim": 10, "out_dim": 4}


@pytest.fixture
def vocabulary() -> Vocabulary:
    return Vocabulary.from_texts(TEXTS)


def test_lstm_is_a_text_encoder_with_its_output_dim(vocabulary):
    encoder = LSTMTextEncoder.from_vocabulary(vocabulary, **SIZES)
    assert isinstance(encoder, TextEncoder)
    assert encoder.output_dim == 4
    assert encoder.vocab_size == len(vocabulary)


def test_lstm_tokenize_is_the_vocabulary_encoding(vocabulary):
    encoder = LSTMTextEncoder.from_vocabulary(vocabulary, **SIZES)
    tokens, lengths = encoder.tokenize([*TEXTS, ""])
    expected_tokens, expected_lengths = vocabulary.encode([*TEXTS, ""])
    assert torch.equal(tokens, expected_tokens) and torch.equal(lengths, expected_lengths)
    assert tokens.dtype == lengths.dtype == torch.long
    assert int(lengths[-1]) == 1  # an empty text is one UNK


def test_encode_is_tokenize_then_forward(vocabulary):
    encoder = LSTMTextEncoder.from_vocabulary(vocabulary, **SIZES).eval()
    with torch.no_grad():
        features = encoder.encode(TEXTS)
        expected = encoder(*vocabulary.encode(TEXTS))
    assert features.shape == (3, 4)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_holding_a_vocabulary_keeps_the_state_dict_and_outputs(vocabulary):
    plain = LSTMTextEncoder(len(vocabulary), **SIZES).eval()
    holding = LSTMTextEncoder.from_vocabulary(vocabulary, **SIZES).eval()
    assert list(holding.state_dict()) == list(plain.state_dict())
    holding.load_state_dict(plain.state_dict())  # a model saved before the interface loads
    tokens, lengths = vocabulary.encode(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(holding(tokens, lengths), plain(tokens, lengths))


def test_lstm_without_vocabulary_cannot_tokenize():
    encoder = LSTMTextEncoder(20, **SIZES)
    with pytest.raises(ValueError, match=r"^vocabulary: .*from_vocabulary"):
        encoder.tokenize(["make it red"])


def test_lstm_rejects_a_vocabulary_of_another_size(vocabulary):
    with pytest.raises(ValueError, match=rf"^vocabulary: expected 99 ids .*of {len(vocabulary)}"):
        LSTMTextEncoder(99, vocabulary=vocabulary, **SIZES)


def test_a_text_encoder_must_define_forward_tokenize_and_output_dim():
    class OnlyForward(TextEncoder):
        def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
            return tokens.float()

    with pytest.raises(TypeError, match="abstract"):
        OnlyForward()  # type: ignore[abstract]


def test_a_minimal_text_encoder_gets_encode_from_the_interface():
    class CharCount(TextEncoder):
        """Feature: (number of characters,) per text, through a 1x1 linear layer."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Linear(1, 1, bias=False)
            nn.init.ones_(self.scale.weight)

        @property
        def output_dim(self) -> int:
            return 1

        def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
            lengths = torch.tensor([max(len(t), 1) for t in texts])
            return torch.ones(len(texts), int(lengths.max()), dtype=torch.long), lengths

        def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
            return self.scale(lengths[:, None].float())

    features = CharCount().encode(["abc", "hello"])
    torch.testing.assert_close(features, torch.tensor([[3.0], [5.0]]))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("lstm", TextEncoderSpec("lstm")),
        ("hf:bert-base-uncased", TextEncoderSpec("hf", "bert-base-uncased")),
        ("hf:/models/my bert", TextEncoderSpec("hf", "/models/my bert")),
        ("open_clip:ViT-B-32", TextEncoderSpec("open_clip", "ViT-B-32")),
        (
            "open_clip:ViT-B-32@laion2b_s34b_b79k",
            TextEncoderSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ),
    ],
)
def test_spec_strings_parse(spec, expected):
    assert parse_text_encoder_spec(spec) == expected
    assert parse_text_encoder_spec(spec).kind in TEXT_ENCODER_KINDS


@pytest.mark.parametrize(
    "spec",
    ["", "LSTM", "lstm:big", "bert", "hf", "hf:", "hf: ", "open_clip", "open_clip:",
     "open_clip:@tag", "open_clip:ViT-B-32@", "timm:vit"],
)
def test_malformed_spec_names_text_encoder_the_forms_and_the_value(spec):
    with pytest.raises(ValueError) as error:
        parse_text_encoder_spec(spec)
    message = str(error.value)
    assert message.startswith("text_encoder: expected 'lstm', 'hf:NAME_OR_PATH' or ")
    assert "open_clip:MODEL[@PRETRAINED]" in message
    assert message.endswith(f"got {spec!r}")
    assert "\n" not in message


def test_non_string_spec_is_rejected():
    with pytest.raises(ValueError, match=r"^text_encoder: expected .* got int$"):
        parse_text_encoder_spec(3)  # type: ignore[arg-type]


def test_build_lstm_spec_holds_the_vocabulary(vocabulary):
    encoder = build_text_encoder("lstm", 12, vocabulary=vocabulary, word_dim=6, hidden_dim=10)
    assert isinstance(encoder, LSTMTextEncoder)
    assert encoder.output_dim == 12 and encoder.vocabulary is vocabulary
    assert encoder.embedding.weight.shape == (len(vocabulary), 6)


def test_build_lstm_spec_needs_a_vocabulary():
    with pytest.raises(ValueError, match=r"^vocabulary: the 'lstm' text encoder needs"):
        build_text_encoder("lstm", 12)


def test_build_rejects_a_malformed_spec_before_building():
    with pytest.raises(ValueError, match=r"^text_encoder: .*got 'bert'$"):
        build_text_encoder("bert", 12)
