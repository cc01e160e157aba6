"""Images: from an id to a normalised float tensor ``(3, H, W)``.

Every data source hands the engine an :class:`ImageLoader`: a callable that maps an
image id to a tensor, and answers ``id in loader`` without decoding anything (so
missing files are found before training; files are also decoded once before training,
see :mod:`valfusion.data.verify`). :class:`ImageFiles` reads files with
Pillow (the ``demo`` extra, imported only when an image is actually read); the
synthetic benchmark renders in memory.

Every file read here becomes a tensor in one of two ways: the default pipeline (resize
to ``image_size``, stretched or padded to keep the aspect ratio, see :data:`RESIZE_MODES`,
then normalise) or a ``transform`` the user passes (any callable from ``PIL.Image`` to a
``(3, H, W)`` float tensor, e.g. a ``torchvision.transforms.v2.Compose``).

Two limits hold for every file read here: an image larger than
:data:`MAX_IMAGE_PIXELS` (``width * height``) is refused before its pixels are decoded,
and :class:`ImageFiles` reads only files that lie inside its root folder once every
symbolic link is followed.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch
from einops import rearrange
from torch import Tensor

from valfusion._validation import is_positive_int
from valfusion.data.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "RESIZE_MODES",
    "ImageFiles",
    "ImageLoader",
    "ImageTransform",
    "ResizeMode",
    "denormalize",
    "load_image",
    "normalize",
    "open_rgb",
    "quiet_pillow_size_warnings",
    "size_record",
    "to_size",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel (R, G, B) mean every loader normalises with by default."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel (R, G, B) standard deviation every loader normalises with by default."""
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
)
"""File suffixes ``ImageFiles(match="stem")`` looks for."""
MAX_IMAGE_PIXELS: int = 8192 * 8192
"""Largest image read, in pixels (``width * height`` = 67,108,864, e.g. 8192 x 8192).

Larger files are refused with a :class:`DataError` naming the file and its size, before
their pixels are decoded: a small file can claim a huge size (a "decompression bomb")
and would otherwise exhaust memory. This is below Pillow's own limit, so Pillow's
``DecompressionBombWarning``/``DecompressionBombError`` never reach the user.
Pass ``max_pixels`` to :func:`load_image` or :class:`ImageFiles` to change it.
"""

ResizeMode = Literal["stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")
"""How the default pipeline fits an image to ``image_size = (H, W)``.

- ``"stretch"`` (default): resized to exactly ``(H, W)``; the aspect ratio changes unless
  it already matches.
- ``"pad"``: scaled by ``s = min(H / h, W / w)`` to ``(round(s h), round(s w))``, which
  keeps the aspect ratio, and centred on an ``(H, W)`` canvas of the normalisation mean
  colour: padded pixels are exactly 0 after normalisation (zeros in the tensor, the mean
  colour in the picture), so they carry no signal.
"""

ImageTransform = Callable[["Image.Image"], Tensor]
"""A user's image pipeline: an RGB ``PIL.Image`` in, a float tensor ``(3, H, W)`` out
(``H, W`` the loader's ``image_size``), used instead of the default resize and
normalisation. A ``torchvision.transforms.v2.Compose([ToImage(), ToDtype(torch.float32,
scale=True), Resize((H, W)), Normalize(mean, std)])`` is one."""


@runtime_checkable
class ImageLoader(Protocol):
    """Maps an image id to a normalised image tensor.

    ``loader(image_id)`` returns a float tensor of shape ``(3, H, W)``;
    ``image_id in loader`` says whether the image exists, without decoding it.

    A loader that reads files may also offer ``resolve(image_id) -> Path | None`` and
    ``max_pixels``, as :class:`ImageFiles` does: :func:`~valfusion.data.build_split` then
    decodes each file once before training (:func:`~valfusion.data.verify_images`).
    """

    def __call__(self, image_id: str) -> Tensor: ...

    def __contains__(self, image_id: object) -> bool: ...


def to_size(image_size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """Normalise an image size argument to ``(H, W)``.

    Args:
        image_size: one int (square) or ``(H, W)``.
        name: the argument name used in error messages.

    Returns:
        ``(H, W)`` as two positive ints.

    Raises:
        ValueError: anything else.
    """
    if isinstance(image_size, int):
        size: tuple[object, ...] = (image_size, image_size)
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str):
        size = tuple(image_size)
    else:
        size = ()
    if len(size) == 2:
        height, width = size
        if is_positive_int(height) and is_positive_int(width):
            return height, width
    raise ValueError(
        f"{name}: expected a positive int or (H, W) of positive ints, got {image_size!r}"
    )


def size_record(image_size: int | Sequence[int]) -> int | list[int]:
    """``image_size`` as results record it: one int when square, else ``[H, W]``.

    Args:
        image_size: an int or ``(H, W)``.

    Returns:
        The int side, or ``[H, W]``.
    """
    height, width = to_size(image_size)
    return height if height == width else [height, width]


def _stats(values: Sequence[float], name: str) -> Tensor:
    stats = torch.tensor(values, dtype=torch.float32)
    if stats.shape != (3,):
        raise ValueError(f"{name}: expected 3 values (R, G, B), got {tuple(values)!r}")
    return rearrange(stats, "c -> c 1 1")


def normalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Map pixel values in ``[0, 1]`` to normalised values: ``(x - mean) / std`` per channel.

    Args:
        images: ``(3, H, W)`` or ``(B, 3, H, W)`` floats in ``[0, 1]``.
        mean: per-channel mean, 3 values.
        std: per-channel standard deviation, 3 values.

    Returns:
        Tensor of the input's shape.
    """
    return (images - _stats(mean, "mean")) / _stats(std, "std")


def denormalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Invert :func:`normalize` for display: ``x * std + mean``, clamped to ``[0, 1]``.

    Args:
        images: ``(3, H, W)`` or ``(B, 3, H, W)`` normalised images.
        mean: the mean used to normalise.
        std: the standard deviation used to normalise.

    Returns:
        Tensor of the input's shape with values in ``[0, 1]``.
    """
    return (images * _stats(std, "std") + _stats(mean, "mean")).clamp(0.0, 1.0)


def _pillow() -> ModuleType:
    """``PIL.Image``, imported on first use (Pillow is the optional ``demo`` extra)."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'reading image files needs Pillow: pip install "valfusion[demo]"'
        ) from err
    return Image


@contextmanager
def quiet_pillow_size_warnings() -> Iterator[None]:
    """Silence Pillow's ``DecompressionBombWarning`` (sizes are checked against ``max_pixels``).

    Meant to wrap a whole batch of reads (``warnings`` filters are process-wide, so it is
    entered once, not from worker threads).
    """
    image_module = _pillow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
        yield


def open_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file completely into an RGB ``PIL.Image``, or say why it cannot be.

    The size in the header is checked against ``max_pixels`` before anything is decoded;
    then every pixel is decoded (a truncated or corrupt file fails here, not mid-training).

    Args:
        path: the image file.
        max_pixels: largest ``width * height`` accepted.

    Returns:
        The decoded ``PIL.Image`` in mode ``"RGB"``.

    Raises:
        DataError: ``PATH: ...`` for a missing, empty, truncated, corrupt or non-image
            file, or an image larger than ``max_pixels``.
        ImportError: Pillow is not installed (the ``demo`` extra).
    """
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(
                    f"{path}: image of {width} x {height} = {width * height:,} pixels is larger "
                    f"than the maximum of {max_pixels:,} pixels (max_pixels)"
                )
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"{path}: image file not found") from err
    except image_module.DecompressionBombError as err:  # past twice Pillow's MAX_IMAGE_PIXELS
        limit = 2 * (image_module.MAX_IMAGE_PIXELS or 0)
        raise DataError(
            f"{path}: image of more than {limit:,} pixels is larger than the maximum of "
            f"{max_pixels:,} pixels (max_pixels)"
            if limit >= max_pixels
            else f"{path}: image of more than {limit:,} pixels is larger than Pillow reads "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # what Pillow raises for files it cannot identify, truncated or corrupt data
        reason = str(err) or type(err).__name__
        raise DataError(f"{path}: cannot read image ({reason})") from err


def _check_resize(resize: object) -> ResizeMode:
    """``resize`` if it is one of :data:`RESIZE_MODES`, else a ``ValueError`` naming it.

    Args:
        resize: the argument to check.

    Returns:
        ``"stretch"`` or ``"pad"``.
    """
    if resize == "stretch" or resize == "pad":
        return resize
    raise ValueError(f"resize: expected 'stretch' or 'pad', got {resize!r}")


def _check_transform(transform: object) -> ImageTransform | None:
    """``transform`` if it is ``None`` or callable, else a ``ValueError`` naming it.

    Args:
        transform: the argument to check.

    Returns:
        The transform.
    """
    if transform is None or callable(transform):
        return transform
    raise ValueError(
        f"transform: expected a callable PIL.Image -> (3, H, W) float tensor or None, "
        f"got {type(transform).__name__}"
    )


def _pixels(rgb: Image.Image) -> Tensor:
    """An RGB ``PIL.Image`` of size ``(w, h)`` as floats in ``[0, 1]``, ``(3, h, w)``."""
    width, height = rgb.size
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return rearrange(pixels, "(h w c) -> c h w", h=height, w=width, c=3).float() / 255.0


def _transformed(
    rgb: Image.Image, transform: ImageTransform, size: tuple[int, int], path: object
) -> Tensor:
    """``transform(rgb)``, checked to be a float tensor ``(3, H, W)`` of the loader's size."""
    image = transform(rgb)
    expected = f"a float tensor (3, {size[0]}, {size[1]}) (image_size)"
    if not isinstance(image, Tensor):
        raise ValueError(
            f"transform: expected it to return {expected}, got {type(image).__name__} for {path}"
        )
    if not image.is_floating_point() or tuple(image.shape) != (3, *size):
        raise ValueError(
            f"transform: expected it to return {expected}, got a {image.dtype} tensor of "
            f"shape {tuple(image.shape)} for {path}"
        )
    # torchvision's v2 transforms return a tv_tensors.Image: hand on a plain tensor.
    return image.as_subclass(Tensor)


def load_image(
    path: str | os.PathLike[str],
    image_size: int | Sequence[int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_pixels: int = MAX_IMAGE_PIXELS,
    *,
    resize: ResizeMode = "stretch",
    transform: ImageTransform | None = None,
) -> Tensor:
    """Read an image file with Pillow, resize it and normalise it (or apply ``transform``).

    Any format Pillow reads, converted to RGB. By default it is resized (bilinear) to
    ``image_size``, stretched or padded to keep the aspect ratio (``resize``, see
    :data:`RESIZE_MODES`), scaled to ``[0, 1]`` and normalised with ``mean``/``std``.
    With ``transform``, the RGB ``PIL.Image`` goes to ``transform`` instead, whose output
    must be a float tensor ``(3, H, W)`` of ``image_size`` (``resize``, ``mean`` and
    ``std`` are then unused).

    Args:
        path: the image file.
        image_size: output size, an int (square) or ``(H, W)``.
        mean: per-channel mean used to normalise.
        std: per-channel standard deviation used to normalise.
        max_pixels: largest ``width * height`` read (:data:`MAX_IMAGE_PIXELS`).
        resize: ``"stretch"`` (default) or ``"pad"`` (aspect ratio kept, padded with the
            mean colour: zeros after normalisation).
        transform: ``PIL.Image -> (3, H, W)`` float tensor, used instead of the default
            pipeline (:data:`ImageTransform`).

    Returns:
        Float tensor ``(3, H, W)`` (float32 from the default pipeline).

    Raises:
        DataError: the file is missing, Pillow cannot read it, or it is larger than
            ``max_pixels``.
        ValueError: ``resize`` or ``transform`` is not valid, or ``transform`` returned
            something other than a float tensor ``(3, H, W)`` of ``image_size``.
        ImportError: Pillow is not installed (the ``demo`` extra).
    """
    height, width = to_size(image_size)
    resize = _check_resize(resize)
    transform = _check_transform(transform)
    with quiet_pillow_size_warnings():
        rgb = open_rgb(path, max_pixels)
    if transform is not None:
        return _transformed(rgb, transform, (height, width), path)
    if resize == "stretch":
        return normalize(
            _pixels(rgb.resize((width, height), _pillow().Resampling.BILINEAR)), mean, std
        )
    scale = min(height / rgb.height, width / rgb.width)
    inner_h = min(height, max(1, round(rgb.height * scale)))
    inner_w = min(width, max(1, round(rgb.width * scale)))
    inner = normalize(
        _pixels(rgb.resize((inner_w, inner_h), _pillow().Resampling.BILINEAR)), mean, std
    )
    canvas = inner.new_zeros(3, height, width)  # zero = the mean colour once normalised
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    canvas[:, top : top + inner_h, left : left + inner_w] = inner
    return canvas


Match = Literal["path", "stem", "name"]


def _within(path: str, folder: str) -> bool:
    """Whether absolute, normalised ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class ImageFiles:
    """Images stored as files under one root folder, read lazily with Pillow.

    How an id finds its file (``match``):

    - ``"path"``: the id is a path relative to ``root`` (generic folder, Fashion200k).
    - ``"stem"``: the id is a file name without suffix, files directly in ``root``
      (FashionIQ: ``B0084Y8XIU`` -> ``root/B0084Y8XIU.jpg`` or ``.png``).
    - ``"name"``: the id is a file name found anywhere below ``root`` (Shoes, whose
      images are often kept in per-category sub-folders).

    Only files inside ``root`` are read: an id that leads out of it (``../x.png``, an
    absolute path, a symbolic link to a file elsewhere) is refused with a
    :class:`DataError` by :meth:`resolve` and by loading, and is not ``in`` the loader.

    Args:
        root: the image folder.
        match: how ids map to files (see above).
        image_size: output size, an int (square) or ``(H, W)``.
        mean: per-channel mean used to normalise.
        std: per-channel standard deviation used to normalise.
        max_pixels: largest image read, ``width * height`` (:data:`MAX_IMAGE_PIXELS`).
        resize: ``"stretch"`` (default) or ``"pad"``, see :data:`RESIZE_MODES`.
        transform: ``PIL.Image -> (3, H, W)`` float tensor used instead of the default
            resize and normalisation (:data:`ImageTransform`); its output is checked
            against ``image_size``.

    ``files(image_id)`` returns a float tensor ``(3, H, W)``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        match: Match = "path",
        image_size: int | Sequence[int] = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_pixels: int = MAX_IMAGE_PIXELS,
        resize: ResizeMode = "stretch",
        transform: ImageTransform | None = None,
    ) -> None:
        if match not in ("path", "stem", "name"):
            raise ValueError(f"match: expected 'path', 'stem' or 'name', got {match!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise ValueError(f"max_pixels: expected a positive int, got {max_pixels!r}")
        self.root = Path(root)
        self.match = match
        self.image_size = to_size(image_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.max_pixels = max_pixels
        self.resize = _check_resize(resize)
        self.transform = _check_transform(transform)
        self._index: dict[str, Path] | None = None
        self._real_root: str | None = None
        self._real_folders: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ImageFiles(root={str(self.root)!r}, match={self.match!r}, image_size={self.image_size})"

    def _build_index(self) -> dict[str, Path]:
        # One directory listing instead of a stat per id: real galleries hold thousands of images.
        index: dict[str, Path] = {}
        if not self.root.is_dir():
            return index
        if self.match == "stem":
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                suffix = os.path.splitext(entry.name)[1].lower()
                if suffix in IMAGE_SUFFIXES and entry.is_file():
                    index.setdefault(os.path.splitext(entry.name)[0], Path(entry.path))
        else:
            for folder, dirs, names in os.walk(self.root):
                dirs.sort()
                for name in sorted(names):
                    index.setdefault(name, Path(folder) / name)
        return index

    def path(self, image_id: str) -> Path | None:
        """The file of ``image_id`` as found under ``root``, or ``None`` when there is none.

        This is where the id points, links not followed and not confined to ``root``;
        :meth:`resolve` is the checked version every read goes through.

        Args:
            image_id: the id as the annotations write it.

        Returns:
            The path, or ``None``.
        """
        if self.match == "path":
            candidate = self.root / image_id
            return candidate if candidate.is_file() else None
        if self._index is None:
            self._index = self._build_index()
        return self._index.get(image_id)

    def _real_file(self, path: str) -> str | None:
        """The real path of the regular file at absolute ``path`` (links followed), or ``None``."""
        # Each folder is resolved once: a gallery holds thousands of files in a few folders.
        folder, name = os.path.split(path)
        real_folder = self._real_folders.get(folder)
        if real_folder is None:
            real_folder = self._real_folders[folder] = os.path.realpath(folder)
        real = os.path.join(real_folder, name)
        try:
            mode = os.lstat(real).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(real)
                mode = os.stat(real).st_mode
        except OSError:
            return None
        return real if stat.S_ISREG(mode) else None

    def resolve(self, image_id: str) -> Path | None:
        """The real file of ``image_id`` (every link followed), checked to lie inside ``root``.

        Args:
            image_id: the id as the annotations write it.

        Returns:
            The absolute, resolved path, or ``None`` when there is no such file.

        Raises:
            DataError: the id leads outside ``root`` (an absolute path, ``..`` climbing out
                of it, or a symbolic link to a file elsewhere).
        """
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        if self.match == "path":  # refuse a climb out before looking at the file system
            lexical = os.path.abspath(os.path.join(self.root, image_id))
            if not _within(lexical, os.path.abspath(self.root)):
                raise DataError(
                    f"image {image_id!r} is outside the image folder {self.root} "
                    "(paths are relative to it and may not climb out with '..')"
                )
            real = self._real_file(lexical)
        else:
            path = self.path(image_id)
            real = None if path is None else self._real_file(os.path.abspath(path))
        if real is None:
            return None
        if not _within(real, self._real_root):
            raise DataError(
                f"image {image_id!r} is {real}, outside the image folder {self._real_root} "
                "(a symbolic link out of it; name the folder that holds the files instead)"
            )
        return Path(real)

    def expected_location(self, image_id: str) -> str:
        """Where ``image_id`` was looked for, for error messages.

        Args:
            image_id: the id as the annotations write it.

        Returns:
            A path or a description of the search.
        """
        if self.match == "path":
            return str(self.root / image_id)
        if self.match == "stem":
            return f"{self.root / image_id}{{.jpg,.png,...}}"
        return f"a file named {image_id!r} below {self.root}"

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        try:
            return self.resolve(image_id) is not None
        except DataError:  # outside the root: not an image of this loader
            return False

    def __call__(self, image_id: str) -> Tensor:
        path = self.resolve(image_id)
        if path is None:
            raise DataError(
                f"image {image_id!r} not found (looked for {self.expected_location(image_id)})"
            )
        return load_image(
            path,
            self.image_size,
            self.mean,
            self.std,
            self.max_pixels,
            resize=self.resize,
            transform=self.transform,
        )
