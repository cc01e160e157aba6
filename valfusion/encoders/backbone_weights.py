"""Where a backbone's initial weights come from: random, the library's pretrained ones, or a file.

Every pyramid built from a torchvision or timm name takes ``weights=`` with one meaning:

- ``None`` (the default): random initialisation; nothing is read or downloaded.
- ``"imagenet"``: the weights that torchvision or timm publish for that architecture,
  through their own API, cache and download (``torchvision.models.get_model_weights``,
  ``timm.create_model(pretrained=True)``). The only way a backbone downloads anything,
  and only because the user asked.
- a path: a local state dict of the plain torchvision/timm model (``.pt``/``.pth``/
  ``.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), keys named
  as in that model. The classifier head may be present or absent; any other missing,
  unexpected or misshapen key is an error naming the file.
- a state dict (``{name: tensor}``) already in memory: the same, checked the same way.

:func:`resolve_backbone_weights` validates the string form of that choice (a config
field, a command-line flag) and :func:`load_backbone_state_dict` reads a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from valfusion._tensor_files import load_safetensors_file, load_tensor_file

__all__ = ["IMAGENET", "load_backbone_state_dict", "resolve_backbone_weights"]

IMAGENET = "imagenet"
"""The ``weights`` value that asks torchvision or timm for their published pretrained weights."""

# Training scripts (timm's train.py, many others) save {"state_dict": ..., "optimizer": ...}.
_WRAPPER_KEYS = ("state_dict", "model")
_SHOWN = 3


def resolve_backbone_weights(
    spec: str | os.PathLike[str] | None, argument: str = "backbone_weights"
) -> str | Path | None:
    """Validate a weights choice written as text: ``None``, ``"imagenet"`` or a file path.

    Args:
        spec: ``None`` (random initialisation), ``"imagenet"`` (the published
            pretrained weights; a file of that name must be written ``./imagenet``) or
            the path of an existing weights file.
        argument: Name used in error messages (the config field or flag).

    Returns:
        ``None``, the string ``"imagenet"``, or the file as a ``Path``; pass it as the
        ``weights=`` of a pyramid.

    Raises:
        ValueError: Naming ``argument``, if ``spec`` is another kind of value, an empty
            string, or a path that is not an existing file.
    """
    if spec is None or spec == IMAGENET:
        return spec
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise ValueError(
            f"{argument}: expected None, {IMAGENET!r} or the path of a weights file, got {spec!r}"
        )
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"{argument}: expected {IMAGENET!r} or an existing weights file (.pt, .pth, "
            f".safetensors), got {os.fspath(spec)!r}, which is not a file"
        )
    return path


def load_backbone_state_dict(
    path: str | os.PathLike[str], argument: str = "weights"
) -> dict[str, Tensor]:
    """Read a backbone state dict from a local file, never running code from it.

    ``.safetensors`` files are read with ``safetensors``; anything else with
    ``torch.load(weights_only=True)``. A training checkpoint that wraps the weights as
    ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Args:
        path: The weights file.
        argument: Name used in error messages.

    Returns:
        ``{parameter or buffer name: tensor}`` on the CPU.

    Raises:
        ValueError: Naming ``argument`` and the file, if it does not exist, cannot be
            read, is refused (a pickle that would run code) or does not hold a
            ``str -> Tensor`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{argument}: expected an existing weights file, got {os.fspath(path)!r}")
    if path.suffix == ".safetensors":
        loaded: Any = load_safetensors_file(path, argument=argument)
    else:
        loaded = load_tensor_file(path, argument=argument)
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(loaded.get(key)):
                loaded = loaded[key]
                break
    if not _is_state_dict(loaded):
        raise ValueError(
            f"{argument}: {path} does not hold a state dict (a mapping of names to tensors), "
            f"got {_describe(loaded)}"
        )
    return dict(loaded)


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
    )


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:_SHOWN]}"
    return type(value).__name__


def read_weights(
    weights: Mapping[str, Tensor] | str | os.PathLike[str], argument: str
) -> tuple[dict[str, Tensor], str]:
    """A state dict given as a mapping or a file, and how to name it in errors."""
    if isinstance(weights, (str, os.PathLike)):
        return load_backbone_state_dict(weights, argument), os.fspath(weights)
    if not _is_state_dict(weights):
        raise ValueError(
            f"{argument}: expected None, {IMAGENET!r}, a state dict or the path of a weights "
            f"file, got {_describe(weights)}"
        )
    return dict(weights), "the state dict"


def check_state_dict(
    expected: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    *,
    argument: str,
    source: str,
    model_name: str,
    head: Sequence[str],
    shapes: bool = True,
) -> None:
    """Require ``given`` to have ``expected``'s keys (and shapes), except the classifier head.

    Keys under a ``head`` prefix may be missing or extra: a backbone drops its classifier.
    Everything else must match; one line names what does not.
    """

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in head)

    missing = [k for k in expected if k not in given and not is_head(k)]
    unexpected = [k for k in given if k not in expected and not is_head(k)]
    mismatched = (
        [
            f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
            for k, v in given.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if shapes
        else []
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{len(found)} {what} {found[:_SHOWN]}"
            for found, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (mismatched, "shape mismatches (file vs model)"),
            )
            if found
        ]
        raise ValueError(f"{argument}: {source} does not fit {model_name}: {', '.join(problems)}")


def _import_timm(needed_by: str) -> Any:
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            f'{needed_by} needs timm to build a model by name: pip install "valfusion[timm]"'
        ) from error
    return timm


def check_built_module_options(model: nn.Module, options: Mapping[str, object]) -> None:
    """Require the options that configure a model built by name to be unset (``None``)
    when ``model`` is a module already built: one line names the first one given."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(
            f"{given[0]}: only used when model is a timm name; got a built module "
            f"({type(model).__name__}); configure it before passing it"
        )


# Arguments of timm's feature-extraction wrapper, not of the model itself.
_FEATURE_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg")


def create_timm_model(
    name: str,
    weights: Mapping[str, Tensor] | str | os.PathLike[str] | None,
    *,
    needed_by: str,
    argument: str = "weights",
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with ``weights`` as this module describes.

    A state dict (or file) is handed to timm as ``pretrained_cfg_overlay={"state_dict":
    ...}``, so timm adapts it to the model as it does its own weights (position
    embeddings resampled to another ``img_size``, the classifier dropped). Its keys are
    first checked against the plain model, built on the meta device (no memory).
    """
    timm = _import_timm(needed_by)
    if kwargs.get("pretrained"):
        raise ValueError(
            f"pretrained: pass {argument}={IMAGENET!r} for timm's pretrained weights, "
            "or the path of a local weights file"
        )
    kwargs.pop("pretrained", None)
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if isinstance(weights, str) and weights == IMAGENET:
        if timm.is_model(name) and not timm.is_model_pretrained(name):
            raise ValueError(
                f"{argument}: timm publishes no pretrained weights for {name!r} (see "
                "timm.list_pretrained()); pass None for random weights or a local file"
            )
        return timm.create_model(name, pretrained=True, **kwargs)
    state, source = read_weights(weights, argument)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURE_KWARGS}
    with torch.device("meta"):
        plain = timm.create_model(name, pretrained=False, **{**plain_kwargs, "num_classes": 0})
    head = plain.pretrained_cfg.get("classifier") or ()
    check_state_dict(
        plain.state_dict(),
        state,
        argument=argument,
        source=source,
        model_name=f"timm {name}",
        head=(head,) if isinstance(head, str) else tuple(head),
        shapes=False,  # timm's own filter adapts some shapes (position embeddings)
    )
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
        )
    except RuntimeError as error:
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        if not mismatches:
            raise
        raise ValueError(
            f"{argument}: {source} does not fit timm {name}: {len(mismatches)} shape "
            f"mismatches, first: {mismatches[0]}"
        ) from None
    # timm keeps its config on the model; without this it would hold a second copy of the weights.
    for config in (model.pretrained_cfg, getattr(model, "default_cfg", None)):
        if isinstance(config, dict):
            config.pop("state_dict", None)
    return model
