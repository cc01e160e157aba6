"""VALConfig and VAL with timm backbones, backbone weights and transformer text encoders.

Tiny models built from configs (random weights); weights files written here; nothing is
downloaded.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
from test_cli_pretrained_stacks import WORDS, write_resnet18_weights, write_tiny_bert

from valfusion.encoders import TimmPyramid, TimmViTPyramid, Vocabulary, build_text_encoder
from valfusion.models import VAL, VALConfig

TEXT = {"text_dim": 8}
LSTM = {"word_dim": 8, "text_hidden_dim": 8, "text_dim": 8}
SMALL = {"backbone_channels": (4, 8, 8)}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_config_accepts_timm_names_and_refuses_a_bare_prefix():
    assert VALConfig(vocab_size=3, backbone="timm:resnet18").backbone == "timm:resnet18"
    assert VALConfig(vocab_size=3, backbone="timm_vit:vit_tiny_patch16_224").backbone.startswith("timm_vit:")
    with pytest.raises(ValueError, match=r"^backbone: expected one of .*'timm_vit:NAME'\), got 'timm_vit:'$"):
        VALConfig(vocab_size=3, backbone="timm_vit:")


def test_config_refuses_weights_for_the_small_backbone():
    with pytest.raises(ValueError, match=r"^backbone_weights: .*'small'"):
        VALConfig(vocab_size=3, backbone_weights="imagenet")


def test_config_refuses_transformer_options_for_the_lstm():
    with pytest.raises(ValueError, match=r"^text_encoder_kwargs: .*\['pooling'\]"):
        VALConfig(vocab_size=3, text_encoder_kwargs={"pooling": "mean"})


def test_config_refuses_a_malformed_text_encoder_spec():
    with pytest.raises(ValueError, match=r"^text_encoder: expected .*got 'bert'$"):
        VALConfig(vocab_size=3, text_encoder="bert")


def test_config_with_text_encoder_round_trips_through_its_dict():
    config = VALConfig(vocab_size=3, text_encoder="hf:/x", text_encoder_kwargs={"pooling": "mean"},
                       backbone="timm:resnet18", backbone_weights="/elsewhere/w.pt")
    assert VALConfig.from_dict(config.to_dict()) == config


def test_weights_file_initialises_the_backbone_and_is_not_needed_to_reload(tmp_path):
    weights = write_resnet18_weights(tmp_path / "resnet18.pt")
    vocab = Vocabulary.from_texts(["make it red"])
    config = VALConfig(vocab_size=len(vocab), backbone="resnet18", backbone_weights=str(weights), **LSTM)
    model = VAL(config, vocabulary=vocab)
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], saved["conv1.weight"])
    model.save_pretrained(tmp_path / "run")
    weights.unlink()  # a saved config naming a file of another machine still loads
    loaded = VAL.from_pretrained(tmp_path / "run")
    assert loaded.config.backbone_weights == str(weights)
    assert torch.equal(loaded.backbone.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_missing_weights_file_is_refused_when_a_model_is_built(tmp_path):
    config = VALConfig(vocab_size=3, backbone="resnet18", backbone_weights=str(tmp_path / "nope.pt"), **LSTM)
    with pytest.raises(ValueError, match=r"^backbone_weights: .*nope\.pt"):
        VAL(config, vocabulary=Vocabulary.from_texts(["a"]))


def test_passed_timm_backbones_must_be_the_named_model():
    config = VALConfig(vocab_size=3, backbone="timm_vit:vit_tiny_patch16_224", image_size=32, **LSTM)
    fits = TimmViTPyramid("vit_tiny_patch16_224", img_size=32)
    assert VAL(config, backbone=fits).backbone is fits
    with pytest.raises(ValueError, match=r"^backbone: config.backbone='timm_vit:vit_tiny_patch16_224' means"):
        VAL(config, backbone=TimmViTPyramid("vit_small_patch16_224", img_size=32))
    cnn = VALConfig(vocab_size=3, backbone="timm:resnet18", **LSTM)
    with pytest.raises(ValueError, match=r"^backbone: .* means TimmPyramid\('resnet18'\)"):
        VAL(cnn, backbone=TimmPyramid("resnet34", out_indices=(2, 3, 4)))


def test_timm_cnn_backbone_gives_its_last_three_levels():
    model = VAL(VALConfig(vocab_size=3, backbone="timm:resnet18", **LSTM))
    assert model.backbone.channels == (128, 256, 512) and model.backbone.reductions == (8, 16, 32)


def test_vit_backbone_composes_patch_token_maps():
    vocab = Vocabulary.from_texts(["make it red"])
    config = VALConfig(vocab_size=len(vocab), backbone="timm_vit:vit_tiny_patch16_224", image_size=32, **LSTM)
    model = VAL(config, vocabulary=vocab).eval()
    # 32 / 16 = a 2 x 2 patch grid at three depths of width 192.
    assert model.backbone.feature_sizes(32) == [(2, 2)] * 3 and model.embedding_dim == 3 * 192
    tokens, lengths = model.tokenize(["make it red", "red"])
    assert model.compose(torch.randn(2, 3, 32, 32), tokens, lengths).shape == (2, 576)


def test_hf_text_encoder_is_built_from_the_config_with_its_vocab_size(bert):
    config = VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT)
    model = VAL(config).eval()
    assert model.vocabulary is None and model.text_encoder.vocab_size == len(WORDS)
    tokens, lengths = model.tokenize(["make it blue"])
    assert tokens[0, : int(lengths[0])].tolist() == [2, 4, 5, WORDS.index("blue"), 3]
    assert model.encode_text(tokens, lengths).shape == (1, 8)
    with pytest.raises(ValueError, match=rf"^vocab_size: .*has {len(WORDS)} token ids; set vocab_size={len(WORDS)}$"):
        VAL(VALConfig(vocab_size=99, text_encoder=f"hf:{bert}", **SMALL, **TEXT))


def test_a_vocabulary_is_refused_for_a_transformer_text_encoder(bert):
    config = VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT)
    with pytest.raises(ValueError, match=r"^vocabulary: only the 'lstm'"):
        VAL(config, vocabulary=Vocabulary.from_texts(["a"]))


def test_passed_text_encoder_must_be_the_kind_and_width_the_config_names(bert):
    config = VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT)
    with pytest.raises(ValueError, match=r"^text_encoder: expected output_dim == config.text_dim \(8\), got 16$"):
        VAL(config, text_encoder=build_text_encoder(f"hf:{bert}", 16))


def test_search_takes_raw_text_with_a_transformer_text_encoder(bert):
    config = VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT)
    model = VAL(config).eval()
    gallery = torch.randn(5, 3, 32, 32)
    by_text = model.search(gallery[0], "make it blue", gallery, k=3)
    by_ids = model.search(gallery[0], model.tokenize(["make it blue"]), gallery, k=3)
    assert by_text.indices.tolist() == by_ids.indices.tolist()
    torch.testing.assert_close(by_text.scores, by_ids.scores, rtol=0, atol=1e-6)


def test_saving_an_lstm_model_over_a_transformer_one_removes_its_text_encoder_folder(bert, tmp_path):
    hf = VAL(VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT))
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "text_encoder" / "config.json").is_file()
    vocab = Vocabulary.from_texts(["make it red"])
    VAL(VALConfig(vocab_size=len(vocab), **SMALL, **LSTM), vocabulary=vocab).save_pretrained(tmp_path)
    assert not (tmp_path / "text_encoder").exists() and (tmp_path / "vocabulary.json").is_file()


def test_transformer_model_without_its_text_encoder_folder_is_refused(bert, tmp_path):
    VAL(VALConfig(vocab_size=len(WORDS), text_encoder=f"hf:{bert}", **SMALL, **TEXT)).save_pretrained(tmp_path)
    for path in sorted((tmp_path / "text_encoder").iterdir()):
        path.unlink()
    (tmp_path / "text_encoder").rmdir()
    with pytest.raises(FileNotFoundError, match=r"has no text_encoder/ folder"):
        VAL.from_pretrained(tmp_path)


def test_a_passed_text_encoder_is_refused_for_the_lstm(bert):
    with pytest.raises(ValueError, match=r"^text_encoder: the 'lstm' text encoder is built from the config"):
        VAL(VALConfig(vocab_size=3, **SMALL, **LSTM), text_encoder=build_text_encoder(f"hf:{bert}", 8))
