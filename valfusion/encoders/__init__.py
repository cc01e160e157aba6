"""Text and image encoders: vocabulary, LSTM text encoder, word vectors, feature pyramids.

torchvision and timm are optional: :class:`TorchvisionResNetPyramid` and
:class:`TimmPyramid` import them only when built. So are transformers and open_clip:
:class:`HFTextEncoder` and :class:`OpenCLIPTextEncoder` import them only when built.
"""

from valfusion.encoders.hf_text_encoder import HF_POOLINGS, HFTextEncoder
from valfusion.encoders.lstm_text_encoder import LSTMTextEncoder
from valfusion.encoders.open_clip_text_encoder import OpenCLIPTextEncoder
from valfusion.encoders.pyramid import FeaturePyramid, check_images
from valfusion.encoders.small_conv_pyramid import SmallConvPyramid
from valfusion.encoders.text_encoder import TextEncoder
from valfusion.encoders.text_encoder_spec import (
    TEXT_ENCODER_KINDS,
    TextEncoderSpec,
    build_text_encoder,
    parse_text_encoder_spec,
)
from valfusion.encoders.timm_pyramid import TimmPyramid
from valfusion.encoders.torchvision_resnet import RESNET_ARCHS, TorchvisionResNetPyramid
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS, EncodedTexts, Vocabulary, tokenize
from valfusion.encoders.word_vectors import WordVectors, load_word_vectors

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "HF_POOLINGS",
    "RESNET_ARCHS",
    "TEXT_ENCODER_KINDS",
    "EncodedTexts",
    "FeaturePyramid",
    "HFTextEncoder",
    "LSTMTextEncoder",
    "OpenCLIPTextEncoder",
    "SmallConvPyramid",
    "TextEncoder",
    "TextEncoderSpec",
    "TimmPyramid",
    "TorchvisionResNetPyramid",
    "Vocabulary",
    "WordVectors",
    "build_text_encoder",
    "check_images",
    "load_word_vectors",
    "parse_text_encoder_spec",
    "tokenize",
]
