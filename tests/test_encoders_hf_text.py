"""HFTextEncoder on a tiny BERT built from a config (random weights, nothing downloaded).

The tokenizer is a word-level ``tokenizers`` model over a dozen words, wrapped in
``PreTrainedTokenizerFast`` and saved like any Hugging Face tokenizer.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import subprocess
import sys

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from valfusion.encoders import HFTextEncoder, TextEncoder, build_text_encoder

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "make", "it", "red", "blue", "a", "the", "shirt",
         "longer", "with", "stripes"]
SHORT = "make it red"
LONG = "the shirt longer with blue stripes a"
# Float32 attention with a -inf-like mask on padded keys: the valid positions see the same
# softmax up to rounding (|ε| ~ 1e-7 relative per op over two layers of width 32).
ATOL = 1e-5


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )


def tiny_bert() -> transformers.BertModel:
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )
    return transformers.AutoModel.from_config(config).eval()


def make_encoder(**kwargs) -> HFTextEncoder:
    options = {"norm": None} | kwargs
    return HFTextEncoder(tiny_bert(), tiny_tokenizer(), 8, **options)


def by_hand(encoder: HFTextEncoder, texts: list[str], pooling: str) -> torch.Tensor:
    """The model run directly on the tokenizer's own padding and mask, pooled, projected."""
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    hidden = encoder.model(**batch).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].float()
        pooled = torch.einsum("bld,bl->bd", hidden, mask) / mask.sum(dim=1, keepdim=True)
    return pooled @ encoder.proj.weight.T + encoder.proj.bias


def test_is_a_text_encoder_of_output_dim():
    encoder = make_encoder(norm="batch")
    assert isinstance(encoder, TextEncoder) and encoder.output_dim == 8
    tokens, lengths = encoder.tokenize([SHORT, LONG, ""])
    assert tokens.dtype == lengths.dtype == torch.long
    # [CLS] words [SEP]: 3 + 2, 7 + 2, and the empty text 0 + 2; L is the longest.
    assert lengths.tolist() == [5, 9, 2] and tokens.shape == (3, 9)
    assert encoder(tokens, lengths).shape == (3, 8)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_the_model_run_by_hand(pooling):
    encoder = make_encoder(pooling=pooling).eval()
    texts = [SHORT, LONG, "red"]
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(texts), by_hand(encoder, texts, pooling),
                                   rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_does_not_change_text_feature(pooling):
    encoder = make_encoder(pooling=pooling).eval()
    alone = encoder.tokenize([SHORT])
    tokens, lengths = encoder.tokenize([SHORT, LONG])
    pad = encoder.tokenizer.pad_token_id
    extra = torch.cat([tokens, torch.full((2, 6), pad)], dim=1)  # padded further still
    with torch.no_grad():
        reference = encoder(*alone)[0]
        torch.testing.assert_close(encoder(tokens, lengths)[0], reference, rtol=0, atol=ATOL)
        torch.testing.assert_close(encoder(extra, lengths)[0], reference, rtol=0, atol=ATOL)


def _loss(features: torch.Tensor) -> torch.Tensor:
    # Not features.sum(): batch norm makes every channel sum to zero over the batch.
    return (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum()


def test_gradients_reach_the_transformer():
    encoder = make_encoder(norm="batch").train()
    _loss(encoder.encode([SHORT, LONG, "blue"])).backward()
    grad = encoder.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert encoder.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_frozen_transformer_gets_no_gradient_and_no_dropout():
    encoder = make_encoder(norm="batch", freeze=True).train()
    assert encoder.training and not encoder.model.training
    _loss(encoder.encode([SHORT, LONG, "blue"])).backward()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert encoder.proj.weight.grad is not None and encoder.proj.weight.grad.abs().sum() > 0


def test_save_architecture_then_state_dict_reproduces_outputs(tmp_path):
    encoder = make_encoder(norm="batch", pooling="mean")
    encoder.train()
    with torch.no_grad():
        for _ in range(3):  # batch-norm running statistics away from the identity
            encoder.encode([SHORT, LONG, "red blue"])
    encoder.eval()
    encoder.save_architecture(tmp_path)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    rebuilt = HFTextEncoder.from_architecture(tmp_path, 8, norm="batch", pooling="mean")
    assert not torch.equal(rebuilt.proj.weight, encoder.proj.weight)  # random until loaded
    rebuilt.load_state_dict(encoder.state_dict())
    rebuilt.eval()
    texts = [SHORT, LONG, "", "stripes stripes stripes"]
    assert torch.equal(rebuilt.tokenize(texts)[0], encoder.tokenize(texts)[0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode(texts), encoder.encode(texts), rtol=0, atol=0)


def test_hf_spec_loads_a_local_folder_and_its_weights(tmp_path):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    encoder = build_text_encoder(f"hf:{tmp_path}", 8, pooling="mean", norm=None)
    assert isinstance(encoder, HFTextEncoder) and encoder.pooling == "mean"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("missing", ["/no/such/bert", "./no-such-bert", "~/no-such-bert"])
def test_a_missing_folder_is_not_taken_for_a_hub_name(tmp_path, missing):
    with pytest.raises(ValueError, match=r"^name_or_path: expected an existing folder .*"
                       r"which is not a folder"):
        HFTextEncoder.from_pretrained(missing, 8)
    with pytest.raises(ValueError, match=r"^name_or_path: .*not a folder"):
        HFTextEncoder.from_pretrained(tmp_path / "absent", 8)


def test_hf_spec_with_architecture_rebuilds_without_weights(tmp_path):
    make_encoder().save_architecture(tmp_path)
    encoder = build_text_encoder("hf:not-a-model-anywhere", 8, architecture=tmp_path)
    assert isinstance(encoder, HFTextEncoder) and encoder.model.config.hidden_size == 32


def test_tokenize_pads_on_the_right_whatever_the_tokenizer_default():
    encoder = make_encoder()
    right = encoder.tokenize([SHORT, LONG])
    encoder.tokenizer.padding_side = "left"
    left = encoder.tokenize([SHORT, LONG])
    assert torch.equal(left[0], right[0]) and torch.equal(left[1], right[1])
    assert left[0][0, -1] == encoder.tokenizer.pad_token_id


def test_tokenize_truncates_at_max_length():
    encoder = make_encoder(max_length=4)
    tokens, lengths = encoder.tokenize([LONG, SHORT])
    assert tokens.shape == (2, 4) and lengths.tolist() == [4, 4]
    assert tokens[0, -1] == encoder.tokenizer.sep_token_id


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"pooling": "max"}, r"^pooling: expected one of \('cls', 'mean'\), got 'max'$"),
        ({"norm": "layer"}, r"^norm: expected one of \('batch', None\), got 'layer'$"),
        ({"freeze": 1}, r"^freeze: expected True or False, got 1$"),
        ({"max_length": 33}, r"^max_length: .*max_position_embeddings=32, got 33$"),
    ],
)
def test_bad_options_name_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_encoder(**kwargs)


def test_bad_inputs_name_the_argument():
    encoder = make_encoder()
    with pytest.raises(ValueError, match=r"^texts: .*single str"):
        encoder.tokenize(SHORT)
    with pytest.raises(ValueError, match=r"^texts: expected at least one text"):
        encoder.tokenize([])
    with pytest.raises(ValueError, match=r"^tokens: expected ids in \[0, vocab_size=14\)"):
        encoder(torch.tensor([[2, 99]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"^tokens: expected at most max_position_embeddings=32"):
        encoder(torch.zeros(1, 33, dtype=torch.long), torch.tensor([33]))


def test_missing_transformers_is_one_line_naming_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from valfusion.encoders import HFTextEncoder\n"
        "try:\n"
        "    HFTextEncoder.from_pretrained('bert-base-uncased', 8)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout == 'HFTextEncoder needs Hugging Face transformers: pip install "valfusion[hf]"\n'
