"""Run identity: what a run trains on, so that resuming it cannot silently change it.

A :class:`RunIdentity` records the data a run reads and the settings outside
:class:`~valfusion.engine.TrainConfig` that change its weights:

- the data source string (canonical: ``kind:/absolute/path[:category]``) and the loader
  options it was given;
- a fingerprint of the annotations (:func:`annotation_fingerprint`);
- the image size the data were loaded at;
- the CPU thread count (``torch.get_num_threads()``): PyTorch splits reductions by thread,
  so the count changes the rounding of sums and, through training, the weights.

The trainer writes it to ``RUN_DIR/run_identity.json`` and into every checkpoint;
resuming with an identity that differs is refused, naming each difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from valfusion.data.source import parse_source
from valfusion.data.split import DataSplit, RetrievalData

__all__ = ["RunIdentity", "annotation_fingerprint", "canonical_source"]

_UNSET = object()


def annotation_fingerprint(data: RetrievalData) -> str:
    """SHA-256 of the loaded annotations of every split, the same on every process and machine.

    Hashes, split by split (training first, then the evaluation splits by name): every
    triplet's reference id, text and target ids, the gallery ids, and the side
    information (``{image id: text}``, sorted). File locations (``Triplet.source``, the
    source's folder) are left out, so moving the data does not change it; editing,
    adding, dropping or reordering a triplet, caption or id does.

    Args:
        data: The loaded data.

    Returns:
        64 hexadecimal characters.
    """
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        digest.update(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        digest.update(b"\n")

    splits: list[tuple[str, DataSplit]] = [] if data.train is None else [("train", data.train)]
    splits += [(f"evaluation:{name}", split) for name, split in sorted(data.evaluation.items())]
    for role, split in splits:
        feed([role, len(split.triplets), len(split.gallery), len(split.side_info)])
        for triplet in split.triplets:
            feed([triplet.reference, triplet.text, list(triplet.targets)])
        feed(list(split.gallery))
        feed(sorted(split.side_info.items()))
    return digest.hexdigest()


def canonical_source(spec: str) -> str:
    """A source string in one spelling: ``synthetic`` or ``kind:/absolute/path[:category]``.

    ``./data``, ``folder:data`` and ``folder:/home/me/data`` name the same folder and give
    the same string.

    Args:
        spec: A source string (grammar of :func:`~valfusion.data.load_source`).

    Returns:
        The canonical string.

    Raises:
        ValueError: ``spec`` is not a source string.
    """
    parsed = parse_source(spec)
    if parsed.path is None:
        return parsed.kind
    text = f"{parsed.kind}:{parsed.path.resolve()}"
    return text if parsed.category is None else f"{text}:{parsed.category}"


def _json(value: Any) -> Any:
    # JSON's own spelling (tuples become lists), so that a saved identity equals a fresh one.
    return json.loads(json.dumps(value))


def _shown(value: Any) -> str:
    return "(not set)" if value is _UNSET else repr(value)


@dataclass(frozen=True)
class RunIdentity:
    """What a run trains on, beyond its :class:`~valfusion.engine.TrainConfig`.

    Attributes:
        annotations: :func:`annotation_fingerprint` of the data.
        image_size: The side (or ``[H, W]``) the images were loaded at, ``None`` when the
            data do not say (``data.info["image_size"]``).
        threads: ``torch.get_num_threads()`` when the run was set up.
        source: The canonical data source string (:func:`canonical_source`), or ``None``
            when the caller did not say (a run built from a ``RetrievalData`` in Python).
        data_options: The loader options given with the source (without ``splits`` and
            ``image_size``), or ``None`` when the caller did not say.
    """

    annotations: str
    image_size: int | list[int] | None
    threads: int
    source: str | None = None
    data_options: dict[str, Any] | None = None

    @classmethod
    def from_data(
        cls,
        data: RetrievalData,
        *,
        source: str | None = None,
        data_options: Mapping[str, Any] | None = None,
    ) -> RunIdentity:
        """The identity of a run on ``data`` with this process's thread count.

        Args:
            data: The loaded data.
            source: The source string ``data`` was loaded from (canonicalised), if known.
            data_options: The loader options ``data`` was loaded with, if known (must be
                JSON-serialisable; ``splits`` and ``image_size`` are left out).

        Returns:
            The identity.
        """
        options = None
        if data_options is not None:
            options = _json({k: v for k, v in data_options.items() if k not in ("splits", "image_size")})
        size = data.info.get("image_size")
        return cls(
            annotations=annotation_fingerprint(data),
            image_size=None if size is None else _json(size),
            threads=torch.get_num_threads(),
            source=None if source is None else canonical_source(source),
            data_options=options,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (inverse of :meth:`from_dict`)."""
        return {
            "source": self.source,
            "data_options": self.data_options,
            "annotations": self.annotations,
            "image_size": self.image_size,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunIdentity:
        """Rebuild an identity written by :meth:`to_dict`.

        Args:
            data: The dictionary written by :meth:`to_dict`.

        Raises:
            ValueError: A key is missing or unknown.
        """
        expected = {"source", "data_options", "annotations", "image_size", "threads"}
        if set(data) != expected:
            raise ValueError(f"run identity: expected the keys {sorted(expected)}, got {sorted(data)}")
        return cls(**_json(dict(data)))

    def differences(self, given: RunIdentity) -> list[str]:
        """What differs between this (saved) identity and ``given``, one entry per difference.

        ``source`` and ``data_options`` are compared only when both identities state them.

        Args:
            given: The identity of the run about to resume.

        Returns:
            Entries such as ``"data option num_train: saved 64, given 32"``; empty when
            the runs agree.
        """
        found = []
        if self.source is not None and given.source is not None and self.source != given.source:
            found.append(f"source: saved {self.source!r}, given {given.source!r}")
        if self.data_options is not None and given.data_options is not None:
            for key in sorted(set(self.data_options) | set(given.data_options)):
                saved, now = self.data_options.get(key, _UNSET), given.data_options.get(key, _UNSET)
                if saved != now:
                    found.append(f"data option {key}: saved {_shown(saved)}, given {_shown(now)}")
        if self.annotations != given.annotations:
            found.append(
                f"annotations: saved fingerprint {self.annotations[:12]}, given {given.annotations[:12]} "
                "(the triplets, texts or image ids differ)"
            )
        if self.image_size != given.image_size:
            found.append(f"image size: saved {self.image_size!r}, given {given.image_size!r}")
        if self.threads != given.threads:
            found.append(
                f"threads: saved {self.threads}, given {given.threads} (the thread count changes the "
                "weights; set it with --threads or torch.set_num_threads)"
            )
        return found
