"""Text and image encoders: vocabulary, LSTM text encoder, word vectors, feature pyramids.

torchvision and timm are optional: :class:`TorchvisionResNetPyramid` and
:class:`TimmPyramid` import them only when built.
"""

from valfusion.encoders.lstm_text_encoder import LSTMTextEncoder
from valfusion.encoders.pyramid import FeaturePyramid, check_images
from valfusion.encoders.small_conv_pyramid import SmallConvPyramid
from valfusion.encoders.timm_pyramid import TimmPyramid
from valfusion.encoders.torchvision_resnet import RESNET_ARCHS, TorchvisionResNetPyramid
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS, EncodedTexts, Vocabulary, tokenize
from valfusion.encoders.word_vectors import WordVectors, load_word_vectors

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "RESNET_ARCHS",
    "EncodedTexts",
    "FeaturePyramid",
    "LSTMTextEncoder",
    "SmallConvPyramid",
    "TimmPyramid",
    "TorchvisionResNetPyramid",
    "Vocabulary",
    "WordVectors",
    "check_images",
    "load_word_vectors",
    "tokenize",
]
