"""valfusion.data: triplet sources (synthetic benchmark, generic folder, FashionIQ, Shoes, Fashion200k, CIRR).

Every source loads onto :class:`RetrievalData`: a training :class:`DataSplit` and
evaluation splits, each with its :class:`Triplet` list, gallery ids, image loader and
side information. :func:`load_source` picks the loader from one string
(``"synthetic"``, a folder, ``"fashioniq:DIR[:CATEGORY]"``, ``"shoes:DIR"``,
``"fashion200k:DIR"``, ``"cirr:DIR"``). Bad data raise :class:`DataError` naming ``file:line``: every
image is decoded before training (:func:`verify_images`, cached) and read only from
inside its folder.
"""

from valfusion.data.cirr import CIRR_EVAL_SPLITS, CirrSplit, load_cirr
from valfusion.data.datasets import (
    GalleryDataset,
    QueryBatch,
    QueryDataset,
    QuerySample,
    TripletBatch,
    TripletDataset,
    TripletSample,
    collate_queries,
    collate_triplets,
)
from valfusion.data.errors import DataError
from valfusion.data.fashion200k import load_fashion200k
from valfusion.data.fashioniq import CAPTION_MODES, FASHIONIQ_CATEGORIES, load_fashioniq
from valfusion.data.folder import load_folder, write_folder
from valfusion.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    RESIZE_MODES,
    ImageFiles,
    ImageLoader,
    ImageTransform,
    denormalize,
    load_image,
    normalize,
)
from valfusion.data.scenes import Edit, Scene, SceneObject
from valfusion.data.shoes import load_shoes
from valfusion.data.source import SOURCE_KINDS, SourceSpec, load_source, parse_source
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.data.synthetic import HELD_OUT_COMBINATIONS, SyntheticBenchmark, SyntheticImages
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split
from valfusion.data.verify import image_cache_dir, verify_images

__all__ = [
    "CAPTION_MODES",
    "CIRR_EVAL_SPLITS",
    "FASHIONIQ_CATEGORIES",
    "HELD_OUT_COMBINATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "RESIZE_MODES",
    "SOURCE_KINDS",
    "CirrSplit",
    "DataError",
    "DataSplit",
    "Edit",
    "GalleryDataset",
    "ImageFiles",
    "ImageLoader",
    "ImageTransform",
    "QueryBatch",
    "QueryDataset",
    "QuerySample",
    "RetrievalData",
    "Scene",
    "SceneObject",
    "SourceSpec",
    "SyntheticBenchmark",
    "SyntheticImages",
    "Triplet",
    "TripletBatch",
    "TripletDataset",
    "TripletSample",
    "build_split",
    "collate_queries",
    "collate_triplets",
    "denormalize",
    "image_cache_dir",
    "load_cirr",
    "load_fashion200k",
    "load_fashioniq",
    "load_folder",
    "load_image",
    "load_shoes",
    "load_source",
    "normalize",
    "parse_source",
    "verify_images",
    "write_folder",
]
