"""OpenCLIPTextEncoder on a tiny CLIP registered from a config file (random weights).

The tokenizer is CLIP's ``SimpleTokenizer``, whose BPE vocabulary ships with open_clip;
nothing is downloaded.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the network

import subprocess
import sys

import open_clip
import pytest
import torch

from valfusion.encoders import OpenCLIPTextEncoder, TextEncoder, build_text_encoder

NAME = "valfusion-tiny-clip"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
SHORT = "make it red"
LONG = "a much longer request: the same shirt but with blue stripes and no collar"
# Float32 causal attention: padded steps come after every valid one and are masked out of
# them, so only summation order can differ (|ε| ~ 1e-7 relative, two layers of width 32).
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_registered(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_config") / f"{NAME}.json"
    path.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(path)


def make_encoder(**kwargs) -> OpenCLIPTextEncoder:
    options = {"norm": None} | kwargs
    return OpenCLIPTextEncoder.from_name(NAME, 8, **options)


def test_is_a_text_encoder_of_output_dim():
    encoder = make_encoder(norm="batch")
    assert isinstance(encoder, TextEncoder) and encoder.output_dim == 8
    tokens, lengths = encoder.tokenize([SHORT, ""])
    # [SOT] make it red [EOT], and [SOT] [EOT]; trimmed to the longest, not to 16.
    assert lengths.tolist() == [5, 2] and tokens.shape == (2, 5)
    assert tokens[0, 4] == tokens[1, 1] == encoder.tokenizer.eot_token_id
    assert encoder(tokens, lengths).shape == (2, 8)


def test_only_the_text_tower_is_kept():
    keys = list(make_encoder().state_dict())
    assert "text.token_embedding.weight" in keys
    assert not [key for key in keys if "visual" in key or "logit_scale" in key]


def test_features_are_clips_encode_text_projected():
    model = open_clip.create_model(NAME).eval()
    tokenizer = open_clip.get_tokenizer(NAME)
    encoder = OpenCLIPTextEncoder(model, tokenizer, 8, norm=None).eval()
    texts = [SHORT, LONG, "blue"]
    with torch.no_grad():
        expected = model.encode_text(tokenizer(texts)) @ encoder.proj.weight.T + encoder.proj.bias
        torch.testing.assert_close(encoder.encode(texts), expected, rtol=1e-5, atol=ATOL)


def test_long_text_is_cut_at_context_length_keeping_eot():
    encoder = make_encoder()
    tokens, lengths = encoder.tokenize([LONG])
    assert tokens.shape == (1, 16) and lengths.tolist() == [16]
    assert tokens[0, -1] == encoder.tokenizer.eot_token_id


def test_padding_does_not_change_text_feature():
    encoder = make_encoder().eval()
    alone = encoder.tokenize([SHORT])
    tokens, lengths = encoder.tokenize([SHORT, LONG])
    junk = tokens.clone()
    junk[0, 5:] = 7  # anything after a row's length is ignored
    with torch.no_grad():
        reference = encoder(*alone)[0]
        torch.testing.assert_close(encoder(tokens, lengths)[0], reference, rtol=0, atol=ATOL)
        torch.testing.assert_close(encoder(junk, lengths)[0], reference, rtol=0, atol=ATOL)


def _loss(features: torch.Tensor) -> torch.Tensor:
    # Not features.sum(): batch norm makes every channel sum to zero over the batch.
    return (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum()


def test_gradients_reach_the_text_tower():
    encoder = make_encoder(norm="batch").train()
    _loss(encoder.encode([SHORT, LONG, "blue"])).backward()
    assert encoder.text.token_embedding.weight.grad.abs().sum() > 0
    assert encoder.text.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0


def test_frozen_text_tower_gets_no_gradient():
    encoder = make_encoder(norm="batch", freeze=True).train()
    assert encoder.training and not encoder.text.training
    _loss(encoder.encode([SHORT, LONG, "blue"])).backward()
    assert all(p.grad is None for p in encoder.text.parameters())
    assert encoder.proj.weight.grad.abs().sum() > 0


def test_save_architecture_then_state_dict_reproduces_outputs(tmp_path):
    encoder = make_encoder(norm="batch").train()
    with torch.no_grad():
        for _ in range(3):  # batch-norm running statistics away from the identity
            encoder.encode([SHORT, LONG, "red blue"])
    encoder.eval()
    encoder.save_architecture(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open_clip_config.json"]
    rebuilt = build_text_encoder(f"open_clip:{NAME}", 8, architecture=tmp_path, norm="batch")
    assert isinstance(rebuilt, OpenCLIPTextEncoder)
    assert not torch.equal(rebuilt.text.positional_embedding, encoder.text.positional_embedding)
    rebuilt.load_state_dict(encoder.state_dict())
    rebuilt.eval()
    texts = [SHORT, LONG, ""]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode(texts), encoder.encode(texts), rtol=0, atol=0)


def test_pretrained_file_after_at_loads_its_weights(tmp_path):
    source = open_clip.create_model(NAME)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    encoder = build_text_encoder(f"open_clip:{NAME}@{path}", 8)
    torch.testing.assert_close(
        encoder.text.token_embedding.weight, source.token_embedding.weight, rtol=0, atol=0
    )


@pytest.mark.parametrize("missing", ["/no/such/clip.pt", "./no-such-clip.pt", "~/no-such.pt"])
def test_a_missing_checkpoint_after_at_names_the_argument(missing):
    with pytest.raises(ValueError, match=r"^name: expected MODEL@PRETRAINED .*does not exist"):
        OpenCLIPTextEncoder.from_name(f"{NAME}@{missing}", 8)


def test_unknown_model_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"^name: expected an open_clip model name .*'no-such-clip'"):
        OpenCLIPTextEncoder.from_name("no-such-clip", 8)


def test_bad_inputs_name_the_argument():
    encoder = make_encoder()
    with pytest.raises(ValueError, match=r"^texts: .*single str"):
        encoder.tokenize(SHORT)
    with pytest.raises(ValueError, match=r"^tokens: expected at most context_length=16 steps"):
        encoder(torch.ones(1, 17, dtype=torch.long), torch.tensor([17]))
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[1, T=3\]"):
        encoder(torch.ones(1, 3, dtype=torch.long), torch.tensor([0]))


def test_missing_open_clip_is_one_line_naming_the_extra():
    code = (
        "import sys; sys.modules['open_clip'] = None\n"
        "from valfusion.encoders import OpenCLIPTextEncoder\n"
        "try:\n"
        "    OpenCLIPTextEncoder.from_name('ViT-B-32', 8)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout == 'OpenCLIPTextEncoder needs open_clip: pip install "valfusion[open_clip]"\n'
