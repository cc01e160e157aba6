"""A saved :class:`~valfusion.models.VAL`: the folder :meth:`VAL.save_pretrained
<valfusion.models.VAL.save_pretrained>` writes and :meth:`VAL.from_pretrained
<valfusion.models.VAL.from_pretrained>` reads.

``DIR/config.json`` (:class:`~valfusion.models.VALConfig`), ``DIR/vocabulary.json`` (when
the model has a vocabulary), ``DIR/text_encoder/`` (a transformer text encoder's
configuration and tokenizer files) and the weights: ``DIR/model.safetensors`` (with the optional
``safetensors`` package) or ``DIR/model.pt`` (``torch.save``, read with
``weights_only=True``). Every file is written with the package's one atomic writer and read
without running code; a file that does not fit is one ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from valfusion._io import atomic_write
from valfusion._tensor_files import load_safetensors_file, load_tensor_file, safetensors_available
from valfusion._validation import fmt_shape
from valfusion.encoders import TextEncoder, Vocabulary
from valfusion.models.config import (
    CONFIG_FILE,
    LEGACY_WEIGHTS_FILE,
    TEXT_ENCODER_DIR,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    WEIGHTS_FILES,
    VALConfig,
)

__all__ = ["load_weights", "read_pretrained", "text_encoder_architecture", "write_pretrained"]


def write_pretrained(
    directory: str | os.PathLike[str],
    config: VALConfig,
    vocabulary: Vocabulary | None,
    state: Mapping[str, Tensor],
    *,
    text_encoder: TextEncoder | None = None,
) -> Path:
    """Write a model's configuration, vocabulary and state dict to ``directory``.

    The weights go to ``model.safetensors`` when ``safetensors`` is installed, else to
    ``model.pt``; the other weights file and a stale ``vocabulary.json`` are removed, so
    that the folder holds exactly this model; so is a stale ``text_encoder/``.

    Args:
        directory: Created if missing.
        config: Written as ``config.json``.
        vocabulary: Written as ``vocabulary.json``, or ``None``.
        state: The model's ``state_dict()`` (any device).
        text_encoder: A transformer text encoder whose architecture goes to
            ``text_encoder/`` (:meth:`~valfusion.encoders.TextEncoder.save_architecture`),
            or ``None``.

    Returns:
        The directory path.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(config.to_dict(), indent=2) + "\n").encode()
    atomic_write(path / CONFIG_FILE, lambda f: f.write(text))
    if vocabulary is not None:
        vocabulary.save(path / VOCABULARY_FILE)
    else:
        (path / VOCABULARY_FILE).unlink(missing_ok=True)
    # A fresh folder, so that no file of an earlier save's tokenizer is left beside these.
    shutil.rmtree(path / TEXT_ENCODER_DIR, ignore_errors=True)
    if text_encoder is not None:
        (path / TEXT_ENCODER_DIR).mkdir()
        text_encoder.save_architecture(path / TEXT_ENCODER_DIR)
    saved = _weights_to_save(state)
    if safetensors_available():
        import safetensors.torch

        data = safetensors.torch.save(saved, metadata={"format": "pt"})
        atomic_write(path / WEIGHTS_FILE, lambda f: f.write(data))
        stale = LEGACY_WEIGHTS_FILE
    else:
        atomic_write(path / LEGACY_WEIGHTS_FILE, lambda f: torch.save(saved, f))
        stale = WEIGHTS_FILE
    (path / stale).unlink(missing_ok=True)
    return path


def read_pretrained(directory: str | os.PathLike[str]) -> tuple[VALConfig, Vocabulary | None, Path]:
    """The configuration and vocabulary of a saved model, and the path of its weights file.

    Args:
        directory: A folder written by :func:`write_pretrained`.

    Returns:
        ``(config, vocabulary or None, weights file)``; ``model.safetensors`` is preferred
        to ``model.pt`` when the folder has both.

    Raises:
        FileNotFoundError: Naming ``directory``, if it lacks ``config.json`` or both
            weights files.
        ValueError: Naming ``config.json``, if it is not JSON or not a valid configuration.
    """
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"directory: {path} has no {CONFIG_FILE}; not a directory written by "
            f"VAL.save_pretrained"
        )
    weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(
            f"directory: {path} has no {' or '.join(WEIGHTS_FILES)}; not a directory "
            f"written by VAL.save_pretrained"
        )
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"directory: {path / CONFIG_FILE} is not valid JSON ({error})") from error
    try:
        config = VALConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"directory: {path / CONFIG_FILE}: {error}") from error
    vocabulary = (
        Vocabulary.load(path / VOCABULARY_FILE) if (path / VOCABULARY_FILE).is_file() else None
    )
    return config, vocabulary, weights


def text_encoder_architecture(
    directory: str | os.PathLike[str], config: VALConfig
) -> Path | None:
    """The saved architecture folder of a transformer text encoder, ``None`` for the LSTM.

    Args:
        directory: A folder written by :func:`write_pretrained`.
        config: Its configuration.

    Raises:
        FileNotFoundError: Naming the folder, if ``config.text_encoder`` is a transformer
            and ``text_encoder/`` is missing.
    """
    if config.text_encoder == "lstm":
        return None
    folder = Path(directory) / TEXT_ENCODER_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"directory: {Path(directory)} has no {TEXT_ENCODER_DIR}/ folder, which a model "
            f"with text_encoder={config.text_encoder!r} needs (written by VAL.save_pretrained)"
        )
    return folder


def load_weights(
    weights: Path, expected: Mapping[str, Tensor], map_location: str | torch.device = "cpu"
) -> Mapping[str, Tensor]:
    """Read a weights file without running code and check it against the model's state.

    Args:
        weights: ``model.safetensors`` or ``model.pt``.
        expected: The ``state_dict()`` of the model built from ``config.json``.
        map_location: Where to load the tensors.

    Returns:
        The state dict, ready for ``load_state_dict`` (strict).

    Raises:
        ValueError: Naming the file, if it is empty, truncated, corrupted or unsafe, or does
            not fit ``expected`` (see :func:`_check_weights`).
    """
    load = load_safetensors_file if weights.name == WEIGHTS_FILE else load_tensor_file
    state = load(weights, argument="directory", map_location=map_location)
    _check_weights(state, expected, weights)
    return state


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _weights_to_save(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU copies of a state dict that safetensors accepts: contiguous, no two sharing memory.

    safetensors refuses tensors that share storage (tied weights) and non-contiguous
    views; each later entry on an already-seen storage gets its own copy, which
    ``load_state_dict`` copies back into the tied parameter (the same values twice).
    """
    saved: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value = value.clone()
        elif value.numel():
            seen.add(storage)
        saved[name] = value
    return saved


def _check_weights(state: object, expected: Mapping[str, Tensor], path: Path) -> None:
    """Require the saved weights to fit the model built from ``config.json``.

    ``load_state_dict`` would raise a multi-line error for other names or shapes and would
    silently cast integer values into floating-point weights; NaN or inf would make every
    score NaN. Each case is one line naming ``path``.
    """
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"directory: {path} holds a {type(state).__name__}, expected a state dict "
            f"(weight name -> tensor) as written by VAL.save_pretrained"
        )
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        found = [f"missing {_names(missing)}"] if missing else []
        found += [f"unexpected {_names(unexpected)}"] if unexpected else []
        raise ValueError(
            f"directory: {path} does not fit {CONFIG_FILE}: {'; '.join(found)} "
            f"(weights of another configuration?)"
        )
    for name, value in state.items():
        want = expected[name]
        if value.shape != want.shape:
            raise ValueError(
                f"directory: {path} does not fit {CONFIG_FILE}: {name} has shape "
                f"{fmt_shape(value)} in the file, {fmt_shape(want)} in the model "
                f"(weights of another configuration?)"
            )
        if value.is_floating_point() != want.is_floating_point():
            raise ValueError(
                f"directory: {path} does not fit {CONFIG_FILE}: {name} is {value.dtype} in "
                f"the file, {want.dtype} in the model"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"directory: {path} holds NaN or inf in {name} (weights of a diverged run?)"
            )
