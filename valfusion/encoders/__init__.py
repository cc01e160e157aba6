"""Text and image encoders: vocabulary, LSTM text encoder, word vectors, feature pyramids.

torchvision and timm are optional: :class:`TorchvisionResNetPyramid`,
:class:`TimmPyramid` and :class:`TimmViTPyramid` import them only when built. Backbone
weights are random unless asked for (``weights="imagenet"`` or a file; see
:mod:`valfusion.encoders.backbone_weights`). So are transformers and open_clip:
:class:`HFTextEncoder` and :class:`OpenCLIPTextEncoder` import them only when built.
"""

from valfusion.encoders.backbone_weights import (
    IMAGENET,
    load_backbone_state_dict,
    resolve_backbone_weights,
)
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
from valfusion.encoders.timm_vit import TimmViTPyramid, default_vit_indices
from valfusion.encoders.torchvision_resnet import RESNET_ARCHS, TorchvisionResNetPyramid
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS, EncodedTexts, Vocabulary, tokenize
from valfusion.encoders.word_vectors import WordVectors, load_word_vectors

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "HF_POOLINGS",
    "IMAGENET",
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
    "TimmViTPyramid",
    "TorchvisionResNetPyramid",
    "Vocabulary",
    "WordVectors",
    "build_text_encoder",
    "check_images",
    "default_vit_indices",
    "load_backbone_state_dict",
    "load_word_vectors",
    "parse_text_encoder_spec",
    "resolve_backbone_weights",
    "tokenize",
]
