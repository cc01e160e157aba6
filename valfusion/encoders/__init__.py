"""Text and image encoders: vocabulary, LSTM text encoder, word vectors, feature pyramids.

torchvision and timm are optional: :class:`TorchvisionResNetPyramid`,
:class:`TimmPyramid` and :class:`TimmViTPyramid` import them only when built. Backbone
weights are random unless asked for (``weights="imagenet"`` or a file; see
:mod:`valfusion.encoders.backbone_weights`).
"""

from valfusion.encoders.backbone_weights import (
    IMAGENET,
    load_backbone_state_dict,
    resolve_backbone_weights,
)
from valfusion.encoders.lstm_text_encoder import LSTMTextEncoder
from valfusion.encoders.pyramid import FeaturePyramid, check_images
from valfusion.encoders.small_conv_pyramid import SmallConvPyramid
from valfusion.encoders.timm_pyramid import TimmPyramid
from valfusion.encoders.timm_vit import TimmViTPyramid, default_vit_indices
from valfusion.encoders.torchvision_resnet import RESNET_ARCHS, TorchvisionResNetPyramid
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS, EncodedTexts, Vocabulary, tokenize
from valfusion.encoders.word_vectors import WordVectors, load_word_vectors

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "IMAGENET",
    "RESNET_ARCHS",
    "EncodedTexts",
    "FeaturePyramid",
    "LSTMTextEncoder",
    "SmallConvPyramid",
    "TimmPyramid",
    "TimmViTPyramid",
    "TorchvisionResNetPyramid",
    "Vocabulary",
    "WordVectors",
    "check_images",
    "default_vit_indices",
    "load_backbone_state_dict",
    "load_word_vectors",
    "resolve_backbone_weights",
    "tokenize",
]
