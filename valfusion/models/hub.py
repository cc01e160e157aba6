"""Sharing a saved model on the Hugging Face Hub, through ``huggingface_hub``'s ``ModelHubMixin``.

The Hub holds exactly the folder :meth:`VAL.save_pretrained
<valfusion.models.VAL.save_pretrained>` writes, plus a model card (``README.md``) naming
valfusion as the library. ``huggingface_hub`` is the optional ``hub`` extra and is imported
only here, only when a repo id is loaded or a model is pushed: a local folder never needs
it, and nothing is downloaded unless a repo id is passed.

The mixin is used the way its integration guide describes (its ``save_pretrained``,
``from_pretrained`` and ``push_to_hub``, with the library's ``_save_pretrained`` and
``_from_pretrained`` hooks), on a small adapter that holds the model rather than as a base
class of :class:`~valfusion.models.VAL`: the model's class and import cost stay the same
whether the extra is installed or not.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from valfusion._tensor_files import _first_sentence
from valfusion.models.config import CONFIG_FILE, TEXT_ENCODER_DIR, VOCABULARY_FILE, WEIGHTS_FILES

__all__ = ["HUB_EXTRA", "is_repo_id", "load_from_hub", "push_model_to_hub"]

#: How to install what the Hub routes need.
HUB_EXTRA = "pip install 'valfusion[hub]'"

# "owner/name" as the Hub spells repo ids (letters, digits, "-", "_", "."); the Hub's own
# validator has the last word once huggingface_hub is installed.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

#: The files of a saved model; everything else in a Hub repo (README.md, ...) is not fetched.
SAVED_FILES = (CONFIG_FILE, *WEIGHTS_FILES, VOCABULARY_FILE)

_MODEL_CARD = """---
{{ card_data }}
---

# {{ repo_id | default("VAL model", true) }}

A `VAL` model (composed image retrieval: a reference image modified by a text) saved by
valfusion's `VAL.save_pretrained`: `config.json` (its `VALConfig`), the weights
(`model.safetensors`) and, when the model has one, its vocabulary (`vocabulary.json`).

```python
from valfusion.models import VAL

model = VAL.from_pretrained("{{ repo_id | default("OWNER/NAME", true) }}")  # pip install "valfusion[hub]"
```
"""


class _SavesPretrained(Protocol):
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path: ...


def is_repo_id(name: object) -> TypeGuard[str]:
    """Whether ``name`` is to be read from the Hub: an ``"owner/name"`` string that is not an
    existing local path (a local folder always wins, as in ``transformers``)."""
    return (
        isinstance(name, str) and _REPO_ID.fullmatch(name) is not None and not os.path.exists(name)
    )


def _missing_hub(argument: str, value: str, needs: str) -> ImportError:
    return ImportError(f"{argument}: {value!r}: {needs} needs huggingface_hub: {HUB_EXTRA}")


@functools.cache
def _hub_model() -> type[Any]:
    """The ``ModelHubMixin`` adapter, defined on first use (it imports ``huggingface_hub``)."""
    from huggingface_hub import ModelHubMixin, snapshot_download

    class ValfusionHubModel(
        ModelHubMixin,
        library_name="valfusion",
        tags=["valfusion", "composed-image-retrieval"],
        model_card_template=_MODEL_CARD,
    ):
        """A model with ``save_pretrained(directory)`` as the mixin sees it."""

        def __init__(self, model: _SavesPretrained) -> None:
            self.model = model

        def _save_pretrained(self, save_directory: Path) -> None:
            self.model.save_pretrained(save_directory)

        @classmethod
        def _from_pretrained(
            cls,
            *,
            model_id: str,
            revision: str | None,
            cache_dir: str | Path | None,
            force_download: bool,
            local_files_only: bool,
            token: str | bool | None,
            load: Callable[[Path], _SavesPretrained] | None = None,
            **_: Any,  # options of older huggingface_hub versions (proxies, resume_download)
        ) -> ValfusionHubModel:
            assert load is not None, "load_from_hub passes load="
            folder = snapshot_download(
                model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=[*SAVED_FILES, f"{TEXT_ENCODER_DIR}/*"],
            )
            return cls(load(Path(folder)))

    return ValfusionHubModel


def load_from_hub(
    repo_id: str,
    load: Callable[[Path], Any],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Any:
    """``load(folder)`` on the Hub repo's saved model, fetched through the Hub's cache.

    Args:
        repo_id: ``"owner/name"``.
        load: Rebuilds the model from a local folder (``VAL.from_pretrained``).
        revision: Branch, tag or commit (default: ``main``).
        cache_dir: The Hub cache folder (default: ``HF_HUB_CACHE``).
        force_download: Download again even if cached.
        local_files_only: Use the cache only (as ``HF_HUB_OFFLINE=1`` does).
        token: Hub token (default: the saved login).

    Returns:
        What ``load`` returns.

    Raises:
        ImportError: If ``huggingface_hub`` is not installed.
        FileNotFoundError: Naming ``directory``, if the Hub has no such repo or revision,
            or, offline, the cache has no snapshot of it.
        ValueError: Naming ``directory``, if the Hub rejects the repo id.
    """
    try:
        hub_model = _hub_model()
        from huggingface_hub.utils import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as error:
        needs = "not a local folder; reading it as a Hugging Face Hub repo id"
        raise _missing_hub("directory", repo_id, needs) from error
    try:
        loaded = hub_model.from_pretrained(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            load=load,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError) as error:
        raise FileNotFoundError(
            f"directory: {repo_id!r} is not a local folder, and the Hugging Face Hub gave no "
            f"model for it ({_first_sentence(error)})"
        ) from error
    except HFValidationError as error:
        raise ValueError(
            f"directory: {repo_id!r} is neither a local folder nor a valid Hub repo id "
            f"({_first_sentence(error)})"
        ) from error
    return loaded.model


def push_model_to_hub(
    model: _SavesPretrained,
    repo_id: str,
    *,
    commit_message: str,
    private: bool | None,
    token: str | None,
    branch: str | None,
    create_pr: bool,
) -> str:
    """Create the Hub repo if needed and upload the saved model and a model card in one commit.

    The mixin's ``push_to_hub``: ``model.save_pretrained`` into a temporary folder, a
    ``README.md`` from the model card template, then one ``upload_folder`` commit.

    Args:
        model: Has ``save_pretrained(directory)``.
        repo_id: ``"owner/name"``.
        commit_message: The commit's message.
        private: Whether a new repo is private (``None``: the account's default).
        token: Hub token (default: the saved login).
        branch: Branch to push to (default: ``main``).
        create_pr: Open a pull request instead of committing to the branch.

    Returns:
        The commit's URL.

    Raises:
        ValueError: Naming ``repo_id``, if it is not an ``"owner/name"`` string.
        ImportError: If ``huggingface_hub`` is not installed.
    """
    if not isinstance(repo_id, str) or _REPO_ID.fullmatch(repo_id) is None:
        raise ValueError(f"repo_id: expected a Hub repo id 'owner/name', got {repo_id!r}")
    try:
        hub_model = _hub_model()
    except ImportError as error:
        raise _missing_hub("repo_id", repo_id, "pushing to the Hugging Face Hub") from error
    commit = hub_model(model).push_to_hub(
        repo_id,
        commit_message=commit_message,
        private=private,
        token=token,
        branch=branch,
        create_pr=create_pr,
        model_card_kwargs={"repo_id": repo_id},
    )
    return str(commit)
