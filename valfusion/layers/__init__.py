"""Composition layers: VAL's composite transformer, its parts, and same-signature baselines."""

from valfusion.layers.backend import get_backend, set_backend, use_backend
from valfusion.layers.combiner import Combiner
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.composite_transformer import CompositeTransformer
from valfusion.layers.concat_fusion import ConcatFusion
from valfusion.layers.conv_norm_act import ConvNormAct
from valfusion.layers.joint_attentional_preservation import JointAttentionalPreservation
from valfusion.layers.multi_level import MultiLevelComposer
from valfusion.layers.registry import COMPOSERS, build_composer
from valfusion.layers.self_attentional_transformation import SelfAttentionalTransformation
from valfusion.layers.text_image_fusion import TextImageFusion
from valfusion.layers.tirg import TIRG
from valfusion.layers.unimodal import ImageOnly, TextOnly

__all__ = [
    "COMPOSERS",
    "TIRG",
    "Combiner",
    "CompositeAttention",
    "CompositeTransformer",
    "ConcatFusion",
    "ConvNormAct",
    "ImageOnly",
    "JointAttentionalPreservation",
    "MultiLevelComposer",
    "SelfAttentionalTransformation",
    "TextImageFusion",
    "TextOnly",
    "build_composer",
    "get_backend",
    "set_backend",
    "use_backend",
]
