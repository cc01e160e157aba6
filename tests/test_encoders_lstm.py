"""Specification of LSTMTextEncoder: masked max-pooling, shapes, gradients, input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from valfusion.encoders import LSTMTextEncoder

VOCAB = 30


def make_encoder(**kwargs) -> LSTMTextEncoder:
    options = {"word_dim": 6, "hidden_dim": 10, "out_dim": 4} | kwargs
    return LSTMTextEncoder(VOCAB, **options)


def warmed_up(encoder: LSTMTextEncoder) -> LSTMTextEncoder:
    """A few training-mode passes so batch-norm running statistics are not the identity."""
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            tokens = torch.randint(2, VOCAB, (8, 5))
            encoder(tokens, torch.randint(1, 6, (8,)))
    return encoder.eval()


def test_output_is_batch_by_out_dim():
    encoder = make_encoder(out_dim=7)
    features = encoder(torch.randint(0, VOCAB, (3, 5)), torch.tensor([5, 2, 1]))
    assert features.shape == (3, 7)


@pytest.mark.parametrize("bidirectional", [False, True])
@given(
    sentence=st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=6),
    extra=st.integers(1, 6),
    filler=st.integers(0, VOCAB - 1),
)
def test_padding_does_not_change_text_feature(bidirectional, sentence, extra, filler):
    torch.manual_seed(0)
    encoder = warmed_up(make_encoder(bidirectional=bidirectional))
    length = len(sentence)
    short = torch.tensor([sentence])
    # Padded steps may hold anything (here a real word id): they must be ignored.
    padded = torch.tensor([sentence + [filler] * extra])
    with torch.no_grad():
        a = encoder(short, torch.tensor([length]))
        b = encoder(padded, torch.tensor([length]))
    torch.testing.assert_close(a, b)


def test_feature_does_not_depend_on_the_other_rows_in_eval_mode():
    encoder = warmed_up(make_encoder())
    alone = encoder(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    batch = encoder(torch.tensor([[9, 9, 9, 9, 9], [3, 4, 5, 0, 0]]), torch.tensor([5, 3]))
    torch.testing.assert_close(alone[0], batch[1])


@pytest.mark.parametrize("norm", ["batch", None])
def test_feature_is_projected_max_over_valid_lstm_outputs(norm):
    encoder = warmed_up(make_encoder(norm=norm))
    tokens = torch.tensor([[4, 7, 2, 0, 0], [5, 6, 7, 8, 9]])
    lengths = torch.tensor([3, 5])
    with torch.no_grad():
        got = encoder(tokens, lengths)
        expected = []
        for row, length in zip(tokens, lengths.tolist()):
            # Independent statement: run the LSTM on the unpadded sentence alone.
            outputs, _ = encoder.lstm(encoder.embedding(row[:length])[None])
            pooled = outputs[0].max(dim=0).values
            feature = pooled @ encoder.proj.weight.T + encoder.proj.bias
            if norm == "batch":
                bn = encoder.norm
                feature = (feature - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
                feature = feature * bn.weight + bn.bias
            expected.append(feature)
    torch.testing.assert_close(got, torch.stack(expected))


def test_every_parameter_gets_a_gradient():
    encoder = make_encoder(num_layers=2, bidirectional=True).train()
    tokens = torch.randint(2, VOCAB, (4, 6))
    features = encoder(tokens, torch.tensor([6, 3, 1, 4]))
    (features * torch.randn_like(features)).sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_padding_embedding_row_is_zero_and_gets_no_gradient():
    encoder = make_encoder(padding_idx=0).train()
    assert torch.count_nonzero(encoder.embedding.weight[0]) == 0
    tokens = torch.tensor([[3, 0, 0], [4, 5, 0], [6, 7, 8]])
    encoder(tokens, torch.tensor([3, 3, 3])).sum().backward()
    assert torch.count_nonzero(encoder.embedding.weight.grad[0]) == 0


BAD_INPUTS = {
    "float tokens": (torch.rand(2, 3), torch.tensor([3, 3]), "tokens"),
    "1-D tokens": (torch.tensor([3, 4, 5]), torch.tensor([3]), "tokens"),
    "id equal to vocab size": (torch.tensor([[3, VOCAB]]), torch.tensor([2]), "tokens"),
    "negative id": (torch.tensor([[3, -1]]), torch.tensor([2]), "tokens"),
    "zero length": (torch.tensor([[3, 4], [5, 6]]), torch.tensor([2, 0]), "lengths"),
    "length beyond T": (torch.tensor([[3, 4], [5, 6]]), torch.tensor([3, 2]), "lengths"),
    "float lengths": (torch.tensor([[3, 4]]), torch.tensor([2.0]), "lengths"),
    "2-D lengths": (torch.tensor([[3, 4]]), torch.tensor([[2]]), "lengths"),
    "batch mismatch": (torch.tensor([[3, 4], [5, 6]]), torch.tensor([2]), "lengths"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    tokens, lengths, name = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=rf"^{name}:"):
        make_encoder()(tokens, lengths)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "layer"}, "norm"),
        ({"padding_idx": VOCAB}, "padding_idx"),
        ({"out_dim": 0}, "out_dim"),
    ],
)
def test_bad_constructor_argument_raises_value_error_naming_it(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        make_encoder(**kwargs)
