"""The ``valfusion`` command: demo, train, evaluate, search, bench.

Every sub-command explains its options with ``--help``; ``valfusion train --config FILE``
reads them from a TOML or JSON file too. Exit statuses:

- 0: done;
- 1: training stopped on a failure (a non-finite loss, data that could not be read)
  after saving the state of its last completed step, named in one line on stderr; or an
  internal error (a bug), with its traceback;
- 2: a user mistake (a bad path, an unknown composer, a bad option value or config file,
  bad data, a ``--resume`` that would change the run), one line on stderr
  (``valfusion --debug COMMAND ...`` prints its traceback too), nothing trained;
- 130 / 143: stopped by SIGINT (Ctrl-C) / SIGTERM; training saves its state first and
  says in one line where, and how to resume.

A user mistake is a :class:`UsageError` (the command's own checks), a
:class:`~valfusion.data.DataError` (it names the file and line) wherever it is raised, and
a ``ValueError``, ``FileNotFoundError`` or ``ImportError`` (a missing extra) raised while
the command reads what it was given (:func:`_reading_input`): the options, the data, the
model folder, the set-up of a training run (and the checks of a resumed one), the query of
``search``. Raised later, while training, evaluating or ranking, a ``ValueError`` is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math
import os
import re
import shlex
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from valfusion._logging import log_to_console
from valfusion._version import __version__

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
RESOLVED_CONFIG_FILE = "resolved_config.json"


class UsageError(Exception):
    """A user mistake the command reports as one line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``valfusion train: error: ... (see --help)``), whose
    arguments are added when it first parses or prints its help.

    The sub-commands take their choices and defaults from the registries and the
    configuration dataclasses, which import torch: added lazily, they cost nothing to
    ``valfusion --version`` and ``valfusion --help``.
    """

    def __init__(
        self, *args: Any, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def populated(self) -> _Parser:
        """This parser, with its arguments added."""
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return self

    def parse_known_args(  # typeshed's overloads are generic in the namespace's type
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        self.populated()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.populated()
        return super().format_usage()

    def format_help(self) -> str:
        self.populated()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


# ---------------------------------------------------------------------------- option types
# Each reads its option from the command line (`__call__`, argparse's `type`) and from a
# --config file (`from_file`), with the same checks and the same message.


@dataclasses.dataclass(frozen=True)
class _Number:
    """An integer or a finite real number, optionally ``"positive"`` or ``"non-negative"``."""

    whole: bool
    bound: str | None = None

    def __call__(self, text: str) -> int | float:
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            raise self._refused(text) from None
        return self._checked(value, text)

    def from_file(self, value: object) -> int | float:
        kinds = int if self.whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise self._refused(value)
        return self._checked(value if self.whole else float(value), value)

    def _checked(self, value: int | float, given: object) -> int | float:
        finite = self.whole or math.isfinite(value)
        if not finite or (self.bound == "positive" and value <= 0) or (self.bound == "non-negative" and value < 0):
            raise self._refused(given)
        return value

    def _refused(self, given: object) -> argparse.ArgumentTypeError:
        noun = "integer" if self.whole else "number"
        what = f"a {self.bound} {noun}" if self.bound else ("an integer" if self.whole else "a number")
        return argparse.ArgumentTypeError(f"expected {what}, got {given!r}")


_INTEGER = _Number(whole=True)
_POSITIVE_INT = _Number(whole=True, bound="positive")
_NON_NEGATIVE_INT = _Number(whole=True, bound="non-negative")
_POSITIVE = _Number(whole=False, bound="positive")
_NON_NEGATIVE = _Number(whole=False, bound="non-negative")


class _Channels:
    """Level channels: ``32,64,128`` on the command line, ``[32, 64, 128]`` in a file."""

    def __call__(self, text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 32,64,128, got {text!r}")
        return values

    def from_file(self, value: object) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
        ):
            raise argparse.ArgumentTypeError(f"expected a list of positive integers like [32, 64, 128], got {value!r}")
        return tuple(value)


class _Checked:
    """A string checked (and normalised) by one of the library's validators, whose
    ``ValueError`` becomes the option's message without the argument's name."""

    def __init__(self, check: Callable[[str], str]) -> None:
        self._check = check

    def __call__(self, text: str) -> str:
        try:
            return self._check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).partition(": ")[2] or str(error)) from None

    def from_file(self, value: object) -> str:
        if not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"expected a string, got {value!r}")
        return self(value)


def _backbone(text: str) -> str:
    from valfusion.models.config import _check_backbone_name

    if text == "custom":  # a module passed in Python
        raise ValueError(f"backbone: 'custom' is a module passed in Python, got {text!r}")
    _check_backbone_name(text)
    return text


def _backbone_weights(text: str) -> str:
    """``imagenet``, or an existing file as an absolute path (the run can be repeated from
    anywhere with its resolved_config.json)."""
    from valfusion.encoders import resolve_backbone_weights

    resolved = resolve_backbone_weights(text)
    return str(resolved) if not isinstance(resolved, Path) else str(resolved.resolve())


def _text_encoder(text: str) -> str:
    """A text-encoder spec; an ``hf:`` folder that exists becomes an absolute path."""
    from valfusion.encoders import parse_text_encoder_spec

    spec = parse_text_encoder_spec(text)
    if spec.kind == "hf" and spec.name is not None and Path(spec.name).is_dir():
        return f"hf:{Path(spec.name).resolve()}"
    return text


class _JsonTable:
    """Options as a JSON object: ``'{"pooling": "mean"}'`` on the command line, a table in a file."""

    def __call__(self, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"pooling\": \"mean\"}}', got {text!r}") from None
        return self.from_file(value)

    def from_file(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a table of options like {{pooling = \"mean\"}}, got {value!r}")
        return value


class _LoaderOption:
    """``-o KEY=VALUE`` (VALUE read as JSON when it parses); in a file, a table of them."""

    def __call__(self, text: str) -> tuple[str, Any]:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        return key, value

    def from_file(self, value: object) -> list[tuple[str, Any]]:
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a table of loader options such as {{num_train = 2000}}, got {value!r}")
        return list(value.items())


def _file_value(action: argparse.Action, value: object) -> Any:
    """``value`` for ``action``'s option from a --config file, checked as the command line checks it."""
    from_file = getattr(action.type, "from_file", None)
    if from_file is not None:
        return from_file(value)
    if action.nargs == 0:  # a switch, such as --drop-missing-images
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
        return value
    if not isinstance(value, str) or (action.choices is not None and value not in action.choices):
        expected = "a string" if action.choices is None else f"one of {', '.join(action.choices)}"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
    return value


def _seeds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected an integer or distinct comma-separated integers like 0,1,2, got {text!r}")
    return values


# ---------------------------------------------------------------------------- data options


# The loader options with a flag of their own; any other goes through -o KEY=VALUE.
_DATA_SWITCHES = ("drop_missing_images", "protocol", "caption_mode")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from valfusion.data.fashioniq import CAPTION_MODES, PROTOCOLS, load_fashioniq

    fashioniq = inspect.signature(load_fashioniq).parameters
    group = parser.add_argument_group("data")
    group.add_argument(
        "--image-size", type=_POSITIVE_INT, default=None,
        help="resize images to this side in pixels (default: 64 for synthetic, 224 for files; "
        "evaluate/search default to the model's)",
    )
    group.add_argument(
        "--drop-missing-images", action="store_true",
        help="drop triplets whose images are missing or unreadable (every image is decoded "
        "before training; counts are printed and recorded) instead of stopping with the list "
        "of bad files",
    )
    group.add_argument(
        "--protocol", choices=PROTOCOLS, default=None,
        help="FashionIQ gallery: 'val' = union of the queries' references and targets, "
        f"'original' = the category's whole image split (default: {fashioniq['protocol'].default})",
    )
    group.add_argument(
        "--caption-mode", choices=CAPTION_MODES, default=None,
        help="FashionIQ's two captions per pair: one query each (separate, as VAL) or one "
        f"joined query (default: {fashioniq['caption_mode'].default})",
    )
    group.add_argument(
        "-o", "--data-option", action="append", type=_LoaderOption(), default=[], metavar="KEY=VALUE",
        help="another option of the source's loader (repeatable), e.g. -o num_train=2000 "
        "for synthetic; VALUE is read as JSON when it parses, else as a string",
    )


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader options given on the command line (not the splits, not the image size)."""
    options: dict[str, Any] = dict(args.data_option)
    for key in _DATA_SWITCHES:
        value = getattr(args, key)
        if value is not None and value is not False:
            options[key] = value
    return options


def _with_image_size(spec: str, options: dict[str, Any], image_size: Any) -> dict[str, Any]:
    """``options`` plus the image size: the one asked for, else 224 for files on disk."""
    from valfusion.data.source import parse_source

    if image_size is not None:
        return {**options, "image_size": image_size}
    if parse_source(spec).kind != "synthetic":
        return {**options, "image_size": 224}
    return dict(options)


def _source_options(spec: str, args: argparse.Namespace, image_size: int | None) -> dict[str, Any]:
    """The keyword options of the source's loader that the data options of ``args`` give."""
    return _with_image_size(spec, _data_options(args), image_size)


def _load_source(spec: str, options: dict[str, Any], splits: tuple[str, ...], image_size: Any) -> Any:
    from valfusion.data.source import load_source

    return load_source(spec, splits=splits, **_with_image_size(spec, options, image_size))


def _load_data(spec: str, args: argparse.Namespace, splits: tuple[str, ...], image_size: int | None) -> Any:
    return _load_source(spec, _data_options(args), splits, image_size)


def _data_image_size(data: Any, requested: int | None) -> int:
    if requested is not None:
        return requested
    return int(data.info.get("image_size", 224)) if hasattr(data, "info") else 224


# ---------------------------------------------------------------------------- commands


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    ks = [key for key in metrics if key.startswith(("recall@", "recall_subset@"))]
    splits = metrics.get("splits", {})
    print(title)
    print(f"protocol: {metrics['protocol']}  (each query's reference image excluded)")
    header = "split".ljust(12) + "".join(k.replace("recall_subset@", "Rs@").replace("recall@", "R@").rjust(8) for k in ks) + "queries".rjust(10) + "gallery".rjust(10)
    print(header)
    rows = list(splits.items()) if len(splits) > 1 else []
    rows.append(("all" if len(splits) > 1 else next(iter(splits), "test"), metrics))
    for name, entry in rows:
        cells = "".join(f"{100 * entry[k]:.2f}".rjust(8) for k in ks)
        print(name.ljust(12) + cells + str(entry["num_queries"]).rjust(10) + str(entry["gallery_size"]).rjust(10))
    dropped = metrics.get("dropped_triplets", 0)
    if dropped:
        print(f"dropped {dropped} triplets for {metrics.get('missing_images', 0)} missing images (recorded)")
    if metrics.get("caption_mode"):
        print(f"caption mode: {metrics['caption_mode']}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from valfusion.engine import TrainingStopped
    from valfusion.engine.demo import format_table, run_demo

    out = Path(args.out)
    seeds = args.seed
    if args.seeds is not None:
        if len(seeds) > 1:
            raise UsageError(f"--seeds: give either --seeds N or a list of seeds with --seed, got --seed {','.join(map(str, seeds))} and --seeds {args.seeds}")
        seeds = tuple(range(seeds[0], seeds[0] + args.seeds))
    try:
        results = run_demo(
            out, quick=args.quick, steps=args.steps, composers=args.composers, seed=seeds,
            progress=False if args.no_progress else None,
        )
    except TrainingStopped as stopped:  # several runs: no one resume command to suggest
        _report_stopped(stopped, None, args.debug)
        return _stopped_status(stopped)
    print(format_table(results))
    print()
    if args.quick:
        print("(--quick is a smoke run of the pipeline: too short for the numbers to mean much)")
    files = results["files"]
    print(f"results:  {out / 'results.json'}, {files['table_markdown']}, {files['table_csv']}")
    print(f"rankings: {out / 'rankings'}/<composer>.csv  (each test query: rank of its correct target, top results)")
    for name, path in results.get("pictures", {}).items():
        print(f"{name.replace('_', ' ')}: {path}")
    runs = out / "runs" if len(seeds) == 1 else out / "runs" / "seed_<S>"
    print(f"runs:     {runs}/<composer>  (model, metrics, history)")
    print(f"time:     {results['seconds']:.0f} s")
    queries = results.get("queries") or []
    composer = next((c for c in ("val", *results["composers"]) if c in results["composers"]), None)
    if queries and composer is not None:
        bench = results["benchmark"]
        run_dir = results["runs"][0]["composers"][composer]["run_dir"]
        print("try one query yourself:")
        print(
            f"  valfusion search {run_dir} --image {queries[0]['image']} "
            f"--text {json.dumps(queries[0]['text'])} --gallery synthetic "
            f"-o num_test={bench['num_queries']} -o seed={bench['seed']} --exclude {queries[0]['reference']}"
        )
    return 0


# ---------------------------------------------------------------------------- train's settings


@dataclasses.dataclass(frozen=True)
class _Setting:
    """A ``train`` option that sets a field of ``TrainConfig``, or of ``VALConfig`` through
    ``TrainConfig.model``; its default, shown in the help, is the field's."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    field: str | None = None  # when not the flag's name
    unset: str = "off"  # what the help calls a default of None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def target(self) -> str:
        """The field it sets."""
        return self.field or self.dest


@functools.cache
def _train_settings() -> dict[str, tuple[_Setting, ...]]:
    """``train``'s settings of ``TrainConfig`` (``"training"``) and of ``VALConfig``
    (``"model"``), with the registries' choices."""
    from valfusion.engine import AMP_MODES, LOGGERS
    from valfusion.layers import COMPOSERS
    from valfusion.losses.hierarchical_matching import FORMS
    from valfusion.models import BACKBONES

    return {
        "training": (
            _Setting("steps", "optimiser steps", _POSITIVE_INT),
            _Setting("batch-size", "triplets per step per process", _POSITIVE_INT),
            _Setting("lr", "peak AdamW learning rate", _POSITIVE),
            _Setting("weight-decay", "AdamW weight decay on weight matrices", _NON_NEGATIVE),
            _Setting("warmup-steps", "linear warm-up steps before the cosine decay", _NON_NEGATIVE_INT),
            _Setting("grad-clip", "max global gradient norm, 0 disables", _NON_NEGATIVE),
            _Setting("amp", "mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA)", choices=AMP_MODES),
            _Setting("seed", "seed of the initialisation, data order and dropout", _INTEGER),
            _Setting("eval-every", "evaluate every N steps, 0 = only at the end", _NON_NEGATIVE_INT),
            _Setting("checkpoint-every", "checkpoint every N steps, 0 = only at the end and when stopped", _NON_NEGATIVE_INT),
            _Setting("keep-checkpoints", "keep the N newest checkpoints, 0 = keep all", _NON_NEGATIVE_INT),
            _Setting("log-every", "record loss and throughput every N steps", _POSITIVE_INT),
            _Setting("logger", "metrics log written as the run goes: RUN_DIR/logs/metrics.csv, TensorBoard event files in RUN_DIR/logs (the 'tensorboard' extra), or none; may change on --resume", choices=LOGGERS),
            _Setting("num-workers", "DataLoader worker processes", _NON_NEGATIVE_INT),
            _Setting("device", _DEVICE_HELP),
        ),
        "model": (
            _Setting("composer", "composition layer", choices=COMPOSERS),
            _Setting(
                "backbone",
                f"image feature pyramid: {', '.join(b for b in BACKBONES if b != 'custom')} (ResNets: the 'vision' "
                "extra), timm:NAME (a timm CNN's last three levels) or timm_vit:NAME (a timm ViT's patch tokens at "
                "three depths, built for --image-size; both the 'timm' extra)",
                _Checked(_backbone), metavar="NAME",
            ),
            _Setting(
                "backbone-weights",
                "initial backbone weights: imagenet (torchvision's or timm's, downloaded into their cache) or the "
                "PATH of a local state dict (.pt, .pth or .safetensors, read without running code)",
                _Checked(_backbone_weights), unset="random", metavar="imagenet|PATH",
            ),
            _Setting("channels", "level channels of the small backbone, e.g. 32,64,128", _Channels(), field="backbone_channels"),
            _Setting(
                "text-encoder",
                "lstm (over the training texts' words), hf:NAME_OR_PATH (a Hugging Face transformers model; the 'hf' "
                "extra) or open_clip:MODEL[@PRETRAINED] (open_clip's text tower, random weights without PRETRAINED; "
                "the 'open_clip' extra); a hub name or a pretrained tag downloads into that library's cache",
                _Checked(_text_encoder), metavar="SPEC",
            ),
            _Setting(
                "text-encoder-options",
                "options of a transformer text encoder as JSON: pooling (hf: cls or mean), freeze (true keeps its "
                "weights fixed), max_length (hf), norm (batch or null)",
                _JsonTable(), field="text_encoder_kwargs", unset="none", metavar="JSON",
            ),
            _Setting("word-dim", "word embedding size (lstm)", _POSITIVE_INT),
            _Setting("text-hidden-dim", "LSTM hidden size", _POSITIVE_INT),
            _Setting("text-dim", "text feature size fed to the composers", _POSITIVE_INT),
            _Setting("loss", "matching loss: batch softmax (paper) or triplet (release)", choices=FORMS),
            _Setting("temperature", "softmax temperature", _POSITIVE),
            _Setting(
                "semantic-dim",
                "train the visual-semantic term on the targets' side information in a space of this size",
                _POSITIVE_INT,
            ),
        ),
    }


_DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"


def _settings() -> tuple[_Setting, ...]:
    return tuple(s for group in _train_settings().values() for s in group)


def _is_training_field(name: str) -> bool:
    """A field of ``TrainConfig`` itself (else of ``VALConfig``)."""
    from valfusion.engine import TrainConfig

    return name in {f.name for f in dataclasses.fields(TrainConfig)}


def _field_default(setting: _Setting) -> Any:
    from valfusion.engine import TrainConfig
    from valfusion.models import VALConfig

    owner = TrainConfig if _is_training_field(setting.target) else VALConfig
    field = next(f for f in dataclasses.fields(owner) if f.name == setting.target)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _setting_help(setting: _Setting) -> str:
    default = _field_default(setting)
    if default is None or default == {}:
        shown = setting.unset
    elif isinstance(default, tuple):
        shown = ",".join(str(v) for v in default)  # as the flag takes it
    else:
        shown = str(default)
    return f"{setting.help} (default: {shown})"


def _train_config(args: argparse.Namespace, image_size: int) -> Any:
    """The ``TrainConfig`` of the settings given, the fields' defaults for the others; its
    ``model`` holds every ``VALConfig`` field, so the saved run does not depend on the
    defaults of the version that resumes it."""
    from valfusion.engine import TrainConfig
    from valfusion.models import VALConfig

    training: dict[str, Any] = {}
    model: dict[str, Any] = {"image_size": image_size}
    for setting in _settings():
        value = getattr(args, setting.dest)
        if value is not None:
            (training if _is_training_field(setting.target) else model)[setting.target] = value
    model = VALConfig(vocab_size=1, **model).to_dict()
    del model["vocab_size"]  # set from the training texts
    return TrainConfig(**training, model=model)


def _saved_value(config: Any, setting: _Setting) -> Any:
    """The value a saved ``TrainConfig`` holds for ``setting``."""
    if _is_training_field(setting.target):
        return getattr(config, setting.target)
    return getattr(config.model_config(1), setting.target)


# ---------------------------------------------------------------------------- train's config file


_NOT_IN_CONFIG_FILE = frozenset({"help", "config", "out", "resume"})


class _ConfigFile(argparse.Action):
    """``--config FILE``: the options of a TOML or JSON file, where the command line sets none.

    The keys are the long options without their dashes (``-`` or ``_``); a switch takes
    ``true``/``false``, ``channels`` a list, ``data_option`` a table. An option given on
    the command line wins, before or after ``--config``; ``-o`` options are added to the
    file's ``data_option`` table. A bad file, an unknown key or a wrong value is an error
    naming the file, the key, what was expected and what was found.
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        path = str(values)
        options = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _NOT_IN_CONFIG_FILE}
        try:
            given = _config_values(_read_config_file(Path(path)), options)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, f"{path}: {error}") from None
        for dest, value in given.items():
            if dest == "data_option":
                setattr(namespace, dest, [*value, *getattr(namespace, dest)])
            elif getattr(namespace, dest) == options[dest].default:  # not set on the command line
                setattr(namespace, dest, value)


def _read_config_file(path: Path) -> dict[str, Any]:
    """The table of a ``.toml`` or ``.json`` file."""
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix.lower())
    if kind is None:
        raise argparse.ArgumentTypeError(f"expected a .toml or .json file, got {path.name!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected UTF-8 text ({error})") from None
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read the file ({error.strerror or error})") from None
    try:
        table = json.loads(text) if kind == "JSON" else _toml().loads(text)
    except ValueError as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise argparse.ArgumentTypeError(f"not valid {kind}: {error}") from None
    if not isinstance(table, dict):
        raise argparse.ArgumentTypeError(f"expected a table of options, got {type(table).__name__}")
    return table


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise argparse.ArgumentTypeError(
                "reading TOML needs Python 3.11 or the tomli package (pip install tomli); or write the file as JSON"
            ) from None
    return tomllib


def _config_values(table: dict[str, Any], options: dict[str, argparse.Action]) -> dict[str, Any]:
    """``{dest: value}`` of a config file's table, each value checked as its option's."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, raw in table.items():
        dest = key.replace("-", "_")
        if dest not in options:
            close = difflib.get_close_matches(dest, options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise argparse.ArgumentTypeError(
                f"unknown key {key!r}{hint}; the keys are the long options of valfusion train without "
                "their dashes"
            )
        if dest in spelled:
            raise argparse.ArgumentTypeError(f"{spelled[dest]!r} and {key!r} set the same option")
        spelled[dest] = key
        try:
            values[dest] = _file_value(options[dest], raw)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"{key}: {error}") from None
    return values


def _resolved_config(config: Any, identity: Any) -> dict[str, Any]:
    """The ``--config`` file of a run: its data source (absolute), loader options, image
    size, thread count and every training and model setting, so that
    ``valfusion train --config RUN_DIR/resolved_config.json --out NEW`` trains the same run
    again, and ``--resume`` with it accepts the run."""
    resolved: dict[str, Any] = {
        "data": identity.source,
        "image_size": config.model_config(1).image_size,
        "threads": identity.threads,
    }
    for setting in _settings():
        value = _saved_value(config, setting)
        if value is not None:
            resolved[setting.dest] = list(value) if isinstance(value, tuple) else value
    options = dict(identity.data_options or {})
    resolved.update({key: options.pop(key) for key in _DATA_SWITCHES if key in options})
    if options:
        resolved["data_option"] = options
    return resolved


# ---------------------------------------------------------------------------- train


_NOT_SET = object()


def _data_flag(key: str) -> str:
    return f"--{key.replace('_', '-')}" if key in _DATA_SWITCHES else f"-o {key}"


def _resume_settings(args: argparse.Namespace, run_dir: Path) -> tuple[Any, dict[str, Any], Any]:
    """The saved configuration, data options and image size of the run to resume.

    Options given (on the command line or in a --config file) must agree with the saved
    ones; those that do not change the weights, such as --checkpoint-every, may change. A
    thread count not given is set to the saved one.

    Raises:
        UsageError: naming every given option that differs (saved vs given).
    """
    import torch

    from valfusion.engine import IDENTITY_FILE, TRAIN_CONFIG_FILE, RunIdentity, TrainConfig
    from valfusion.engine.identity import canonical_source
    from valfusion.engine.trainer import _UNTRAINED_FIELDS

    config = TrainConfig.from_dict(json.loads((run_dir / TRAIN_CONFIG_FILE).read_text()))
    identity_file = run_dir / IDENTITY_FILE
    identity = RunIdentity.from_dict(json.loads(identity_file.read_text())) if identity_file.is_file() else None
    differences = []
    may_change = {}
    for setting in _settings():
        given = getattr(args, setting.dest)
        if given is None:
            continue
        if setting.target in _UNTRAINED_FIELDS:
            may_change[setting.target] = given
        elif given != (saved := _saved_value(config, setting)):
            differences.append(f"--{setting.flag}: saved {saved!r}, given {given!r}")
    options = _data_options(args)
    image_size = args.image_size if args.image_size is not None else config.model.get("image_size")
    if identity is not None:
        if identity.source is not None and canonical_source(args.data) != identity.source:
            differences.append(f"--data: saved {identity.source!r}, given {canonical_source(args.data)!r}")
        if identity.data_options is not None:
            for key, value in options.items():
                if identity.data_options.get(key, _NOT_SET) != value:
                    saved = identity.data_options.get(key, "(not set)")
                    differences.append(f"{_data_flag(key)}: saved {saved!r}, given {value!r}")
            options = dict(identity.data_options)
        if identity.image_size is not None:
            if args.image_size is not None and args.image_size != identity.image_size:
                differences.append(f"--image-size: saved {identity.image_size!r}, given {args.image_size!r}")
            image_size = identity.image_size
        if args.threads is not None and args.threads != identity.threads:
            differences.append(f"--threads: saved {identity.threads}, given {args.threads}")
    if differences:
        raise UsageError(
            f"--resume: {run_dir} was trained with other settings (saved vs given): {'; '.join(differences)}; "
            "drop these options to continue with the saved ones"
        )
    if identity is not None and args.threads is None:
        torch.set_num_threads(identity.threads)
    return TrainConfig.from_dict({**config.to_dict(), **may_change}), options, image_size


def _report_stopped(stopped: Any, resume: str | None, debug: bool) -> None:
    """One line on stderr: what stopped training, where its state is, how to go on."""
    cause = stopped.__cause__
    if cause is not None and (debug or not isinstance(cause, ValueError | OSError)):
        # Not a data problem the user can fix from one line: keep the traceback.
        traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
    how = ""
    if resume is not None:
        how = {
            "signal": f"; resume with: {resume}",
            "data error": f"; fix the data, then resume with: {resume}",
            # The checkpoint resumes, but the same settings replay the same divergence.
            "non-finite loss": "; resuming would repeat it: start a new run with other settings in another --out",
        }[stopped.reason]
    print(f"valfusion {'train' if resume else 'demo'}: {stopped}{how}", file=sys.stderr)


def _stopped_status(stopped: Any) -> int:
    """128 + the signal number for a signal (130 SIGINT, 143 SIGTERM), else 1."""
    return 128 + stopped.signal if stopped.signal is not None else EXIT_FAILED


def _cmd_train(args: argparse.Namespace) -> int:
    from valfusion.engine import (
        CHECKPOINT_DIR,
        RunIdentity,
        TrainingStopped,
        atomic_write_json,
        build_trainer,
        init_distributed,
        latest_checkpoint,
    )

    if args.data is None:
        raise UsageError("--data: expected a SOURCE, on the command line or as 'data' in the --config file")
    run_dir = Path(args.out)
    with _reading_input():
        has_checkpoint = latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None
        if args.resume:
            if not has_checkpoint:
                raise UsageError(f"--resume: {run_dir} holds no checkpoint to resume from")
            config, options, image_size = _resume_settings(args, run_dir)
        elif has_checkpoint:
            raise UsageError(f"--out: {run_dir} already holds a run; pass --resume to continue it or choose another folder")
        else:
            config, options, image_size = None, _data_options(args), args.image_size
        context, _ = init_distributed(args.device or "auto")
    try:
        with _reading_input():
            data = _load_source(args.data, options, ("train", "test"), image_size)
            if config is None:
                config = _train_config(args, _data_image_size(data, image_size))
            identity = RunIdentity.from_data(data, source=args.data, data_options=options)
            trainer = build_trainer(
                data, config, run_dir, resume=args.resume, identity=identity,
                progress=False if args.no_progress else None,
            )
        if context.is_main:
            atomic_write_json(run_dir / RESOLVED_CONFIG_FILE, _resolved_config(config, identity))
        try:
            result = trainer.fit()
        except TrainingStopped as stopped:
            if context.is_main or stopped.reason == "data error":
                resume = f"valfusion train --data {shlex.quote(args.data)} --out {shlex.quote(args.out)} --resume"
                _report_stopped(stopped, resume, args.debug)
            return _stopped_status(stopped)
        if context.is_main and result.metrics is not None:
            _print_metrics(result.metrics, f"{config.composer} after {result.step} steps on {data.name}")
            print(
                f"run directory: {run_dir}  (model, train_config.json, {RESOLVED_CONFIG_FILE}, metrics.json, "
                "history.json, checkpoints/)"
            )
    finally:
        context.close()
    return 0


def _load_model(run_dir: str, device: str | None) -> Any:
    from valfusion.engine import resolve_device
    from valfusion.models import VAL
    from valfusion.models.val import WEIGHTS_FILES

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"RUN_DIR: {path} is not a folder")
    if not (path / "config.json").is_file() or not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise UsageError(
            f"RUN_DIR: {path} has no trained model (config.json, {' or '.join(WEIGHTS_FILES)}); did training finish?"
        )
    try:
        model = VAL.from_pretrained(path)
    except (ValueError, FileNotFoundError) as error:
        # A corrupt, unsafe or mismatched file: the library's message names it.
        raise UsageError(f"RUN_DIR: {_one_line(error).removeprefix('directory: ')}") from error
    if model.config.text_encoder == "lstm" and model.vocabulary is None:
        raise UsageError(f"RUN_DIR: {path} has no vocabulary.json")
    return model.to(resolve_device(device or "auto")).eval()


EVALUATIONS_DIR = "evaluations"


def _evaluation_file(spec: str, options: dict[str, Any]) -> str:
    """``<source>-<hash>.json``: a name of the data source and 8 hex digits of its full
    description (absolute folder, category, loader options), so another source or other
    options never replace an earlier result, and the same ones replace their own."""
    from valfusion.data.source import parse_source

    source = parse_source(spec)
    where = None if source.path is None else Path(source.path).resolve()
    parts = [source.kind, *([where.name] if where is not None else []), *([source.category] if source.category else [])]
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(p for p in parts if p)).strip("-.") or "data"
    described = json.dumps(
        {"kind": source.kind, "path": str(where), "category": source.category, "options": options},
        sort_keys=True, default=str,
    )
    return f"{name}-{hashlib.sha256(described.encode()).hexdigest()[:8]}.json"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from valfusion.data.source import parse_source
    from valfusion.engine import atomic_write_json, evaluate, write_cirr_submission

    with _reading_input():
        kind = parse_source(args.data).kind
        for flag, value in (("--split", args.split), ("--submission", args.submission)):
            if value is not None and kind != "cirr":
                raise UsageError(f"{flag}: only for a CIRR source (cirr:DIR), got --data {args.data!r}")
        if args.split == "test1" and args.submission is None:
            raise UsageError(
                "--split: CIRR's test1 split has no public targets, so no recall; add --submission OUT_DIR "
                "to write the evaluation server's files"
            )
        model = _load_model(args.run_dir, args.device)
        image_size = args.image_size or model.config.image_size
        split_option = {} if args.split is None else {"eval_split": args.split}
        options = {**_source_options(args.data, args, image_size), **split_option}
        data = _load_source(args.data, {**_data_options(args), **split_option}, ("test",), image_size)
    if args.submission is not None:
        written = write_cirr_submission(
            model, data.test, args.submission, batch_size=args.batch_size, num_workers=args.num_workers
        )
        for metric, path in written.items():
            print(f"submission ({metric}): {path}")
        if not data.test.has_targets:
            return 0
    metrics = evaluate(model, data, batch_size=args.batch_size, num_workers=args.num_workers)
    metrics["composer"] = model.config.composer
    metrics["source"] = args.data
    metrics["source_options"] = options
    # Never the training run's metrics.json: one file per data source.
    path = Path(args.run_dir) / EVALUATIONS_DIR / _evaluation_file(args.data, options)
    atomic_write_json(path, metrics)
    _print_metrics(metrics, f"{model.config.composer} ({args.run_dir}) on {data.name}")
    print(f"metrics: {path}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from valfusion.data.images import denormalize, load_image
    from valfusion.engine.evaluation import embed_images
    from valfusion.engine.plots import QueryPicture, check_picture_path, plot_top_results

    _check_text(args.text)
    picture = Path(args.picture) if args.picture else Path(args.run_dir) / "search.png"
    with _reading_input():
        check_picture_path(picture, "--picture")
        model = _load_model(args.run_dir, args.device)
        image_size = args.image_size or model.config.image_size
        query = load_image(args.image, image_size)
        data = _load_data(args.gallery, args, ("test",), image_size)
    device = next(model.parameters()).device
    splits = list(data.evaluation.values())
    ids: list[str] = []
    images_of: dict[str, Any] = {}
    for split in splits:
        for image_id in split.gallery:
            if image_id not in images_of:
                images_of[image_id] = split.images
                ids.append(image_id)

    class _Gallery(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> torch.Tensor:
            return images_of[ids[i]](ids[i])

    model.eval()
    embeddings = embed_images(model, _Gallery(), args.batch_size)
    exclude = None
    if args.exclude is not None:
        if args.exclude not in images_of:
            raise UsageError(f"--exclude: {args.exclude!r} is not in the gallery of {data.name}")
        exclude = ids.index(args.exclude)
    with _reading_input():  # the model's checks of the query (its image, its text)
        result = model.search(
            query.to(device), args.text, embeddings, k=args.k, exclude=exclude, return_attention=True
        )
    print(f"query: {args.image}  +  {args.text!r}   ({model.config.composer}, gallery {len(ids)} images from {data.name})")
    for rank, (index, score) in enumerate(zip(result.indices.tolist(), result.scores.tolist()), start=1):
        print(f"{rank:3d}  {score:.4f}  {ids[index]}")
    attention = None
    if result.attention and result.attention[0] is not None:
        attention = [a.joint_attention[0] for a in result.attention if a is not None]
    try:
        plot_top_results(
            [QueryPicture(
                reference=denormalize(query), text=args.text, attention=attention,
                results=[denormalize(images_of[ids[i]](ids[i])) for i in result.indices.tolist()],
                scores=result.scores.tolist(), label=model.config.composer,
            )],
            picture,
            title=f"{model.config.composer}: top {len(result.indices)} of {len(ids)}",
        )
    except ImportError as err:
        print(f"picture skipped ({err})", file=sys.stderr)
    except OSError as err:
        raise UsageError(f"--picture: cannot write {picture} ({err.strerror or err})") from err
    else:
        print(f"picture: {picture}")
    return 0


def _check_text(text: str) -> None:
    """Refuse a text with bytes the terminal's encoding could not decode (Python keeps
    them as lone surrogates, which no tokenizer or font can use)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        raise UsageError(
            f"--text: expected text in the terminal's encoding ({sys.getfilesystemencoding()}), "
            f"got undecodable bytes: {raw!r}"
        ) from None


def _source_checkout() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks in a fresh Python: ``python -m valfusion.benchmarks ARGS``.

    In a source checkout (this ``valfusion`` beside a ``benchmarks/`` folder), the checkout's
    ``benchmarks`` package instead: the same modules, from the same tree as the code they
    measure, writing to ``benchmarks/results/`` by default.
    """
    root = _source_checkout()
    env = dict(os.environ)
    module = "valfusion.benchmarks"
    if root is not None:
        module = "benchmarks"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    forwarded = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    return subprocess.call([sys.executable, "-m", module, *forwarded], env=env)


# ---------------------------------------------------------------------------- parser


def _add_threads(parser: Any, default: int | None = None, why: str = "") -> None:
    shown = "PyTorch's choice" if default is None else str(default)
    parser.add_argument(
        "--threads", type=_POSITIVE_INT, default=default,
        help="CPU threads per process for PyTorch's kernels; 1 is much faster on a machine whose "
        f"cores are busy with other work (default: {shown}{why})",
    )


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def _demo_options(demo: argparse.ArgumentParser) -> None:
    from valfusion.engine.demo import DEMO_COMPOSERS, DemoSettings
    from valfusion.layers import COMPOSERS

    demo.add_argument("--quick", action="store_true", help="a smoke run of the whole pipeline in about a minute (numbers not meaningful)")
    demo.add_argument("--out", default="valfusion-demo", help="folder for the results, rankings, pictures and one run folder per composer and seed (default: %(default)s)")
    demo.add_argument("--steps", type=_POSITIVE_INT, default=None, help=f"training steps per composer (default: {DemoSettings().steps}; {DemoSettings.quick().steps} with --quick)")
    demo.add_argument(
        "--composers", nargs="+", choices=COMPOSERS, default=None, metavar="NAME",
        help=f"composers to compare, from {', '.join(COMPOSERS)} (default: {' '.join(DEMO_COMPOSERS)})",
    )
    demo.add_argument(
        "--seed", type=_seeds, default=(0,), metavar="SEED[,SEED...]",
        help="seed of the benchmark and of every run; several seeds train every composer once per seed "
        "and report mean ± std [min, max] over them (default: 0)",
    )
    demo.add_argument("--seeds", type=_POSITIVE_INT, default=None, metavar="N", help="N seeds, from --seed on (--seed 0 --seeds 3: seeds 0, 1, 2)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    _add_threads(demo, 1, ": the demo's small models gain little from more")
    demo.set_defaults(func=_cmd_demo)


def _add_settings(group: Any, settings: Sequence[_Setting]) -> Any:
    for setting in settings:
        group.add_argument(
            f"--{setting.flag}", type=setting.type, choices=setting.choices, default=None, metavar=setting.metavar,
            help=_setting_help(setting),
        )
    return group


def _train_options(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "--config", action=_ConfigFile, metavar="FILE",
        help="read options from a TOML or JSON file whose keys are the long options below without "
        "their dashes (e.g. steps = 500, batch_size or batch-size = 16); options given on the command "
        f"line win; RUN_DIR/{RESOLVED_CONFIG_FILE} of a run trains it again",
    )
    train.add_argument("--data", default=None, metavar="SOURCE", help="the data source (see above; required here or in --config)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    train.add_argument(
        "--resume", action="store_true",
        help="continue the run in RUN_DIR from its newest intact checkpoint with its saved configuration, "
        "data options, image size and thread count; a given option that differs is refused",
    )
    settings = _train_settings()
    training = _add_settings(train.add_argument_group("training (defaults: valfusion.engine.TrainConfig)"), settings["training"])
    training.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    _add_threads(training)
    _add_settings(train.add_argument_group("model (defaults: valfusion.models.VALConfig)"), settings["model"])
    _add_data_options(train)
    train.set_defaults(func=_cmd_train)


def _add_inference_options(parser: argparse.ArgumentParser, *, workers: bool) -> None:
    """How evaluate and search embed images: --batch-size, --num-workers, --device."""
    parser.add_argument("--batch-size", type=_POSITIVE_INT, default=256, help="images per forward pass (default: %(default)s)")
    if workers:
        parser.add_argument("--num-workers", type=_NON_NEGATIVE_INT, default=0, help="DataLoader worker processes (default: %(default)s)")
    parser.add_argument("--device", default="auto", help=f"{_DEVICE_HELP} (default: %(default)s)")


def _evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    from valfusion.data.cirr import CIRR_EVAL_SPLITS

    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `valfusion train` (or demo)")
    evaluate.add_argument("--data", required=True, metavar="SOURCE", help="the data source (as for train)")
    evaluate.add_argument(
        "--split", choices=CIRR_EVAL_SPLITS, default=None,
        help="CIRR: the annotation split evaluated (default: val); test1 has no public targets and "
        "needs --submission",
    )
    evaluate.add_argument(
        "--submission", default=None, metavar="OUT_DIR",
        help="CIRR: also write the evaluation server's files (<split>_pred_ranks_recall.json: top 50 "
        "ids per pairid; <split>_pred_ranks_recall_subset.json: top 3) into OUT_DIR",
    )
    _add_inference_options(evaluate, workers=True)
    _add_data_options(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)


def _search_options(search: argparse.ArgumentParser) -> None:
    search.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a trained model")
    search.add_argument("--image", required=True, metavar="PATH", help="the reference image file")
    search.add_argument("--text", required=True, help="the modification text, e.g. 'make the top left object red'")
    search.add_argument("--gallery", required=True, metavar="SOURCE", help="whose evaluation gallery to search (as --data for train)")
    search.add_argument(
        "--exclude", default=None, metavar="ID",
        help="a gallery image id to leave out of the ranking, e.g. the query image itself when the "
        "gallery holds it (as evaluation does)",
    )
    search.add_argument("-k", type=_POSITIVE_INT, default=10, help="how many results (default: %(default)s)")
    search.add_argument("--picture", default=None, metavar="PNG", help="where to draw the results (default: RUN_DIR/search.png)")
    _add_inference_options(search, workers=False)
    _add_data_options(search)
    search.set_defaults(func=_cmd_search)


def _bench_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
        help="benchmark names and options, forwarded; `valfusion bench -- --help` lists them",
    )
    bench.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``valfusion`` argument parser (one sub-parser per command, each adding its
    options when it is first used)."""
    parser = _Parser(
        prog="valfusion",
        description="Composed image retrieval (image search with text feedback) with VAL and its baselines.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"valfusion {__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help="print the traceback of a user error too (otherwise one line); give it before COMMAND",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser(
        "demo", help="train VAL and every baseline on the built-in benchmark and compare them",
        formatter_class=_Formatter, add_arguments=_demo_options,
        description="The main job: the synthetic benchmark (no download), VAL and the baselines trained "
        "with the same budget, one Recall@K table (overall, per edit kind, and for edits that name a grid "
        "cell; over several seeds: mean ± std [min, max] and VAL's lead in each seed) printed and written as "
        "results.md and results.csv, every test query's ranking (rankings/COMPOSER.csv), results.json, and "
        "pictures (learning curves, attention maps, top results with each query's correct target and rank).",
    )
    commands.add_parser(
        "train", help="train a model on a data source", formatter_class=_Formatter, add_arguments=_train_options,
        description="Train one composer on SOURCE and write RUN_DIR: the model (config.json, model.safetensors, "
        f"vocabulary.json for the LSTM or text_encoder/ for a transformer), train_config.json, {RESOLVED_CONFIG_FILE}, checkpoints/, history.json and "
        "metrics.json. Runs the same under `torchrun --nproc_per_node=N -m valfusion train ...` "
        "(DistributedDataParallel).\n\n"
        "SOURCE: synthetic | DIR (generic folder) | folder:DIR | fashioniq:DIR[:dress|shirt|toptee|all] "
        "| shoes:DIR | fashion200k:DIR | cirr:DIR",
    )
    commands.add_parser(
        "evaluate", help="Recall@K of a trained model on a data source", formatter_class=_Formatter,
        add_arguments=_evaluate_options,
        description="Evaluate the model in RUN_DIR on the evaluation split(s) of SOURCE, print the table "
        "and write RUN_DIR/evaluations/<source>-<hash>.json (recall@1/10/50 as fractions, protocol, "
        "num_queries, gallery_size, gallery_hash, dropped counts, the source and its options): one file "
        "per data source and options, so the training result RUN_DIR/metrics.json is never replaced. "
        "CIRR (cirr:DIR): recall@1/5/10/50 and recall_subset@1/2/3 on val; --submission OUT_DIR writes "
        "the test server's files (--split test1: only those).",
    )
    commands.add_parser(
        "search", help="one query: top results for an image and a text", formatter_class=_Formatter,
        add_arguments=_search_options,
        description="Rank the gallery of SOURCE for one reference image and modification text, print the "
        "top results and draw them with the query's joint-attention map.",
    )
    commands.add_parser(
        "bench", help="run the micro-benchmarks on this machine (CPU or GPU)", formatter_class=_Formatter,
        add_arguments=_bench_options,
        description="Time the layers, losses, Recall@K and a training step against reference "
        "implementations and the machine's GEMM ceiling, and write Markdown results that name the "
        "machine (default ./valfusion-bench-results; benchmarks/results/ in a source checkout). Every "
        "argument goes to `python -m valfusion.benchmarks`: e.g. `valfusion bench composite --device "
        "cuda --dtype bf16`, `valfusion bench --suite gpu` (an estimated 8 minutes on an H100, not yet measured), "
        "`valfusion bench --tiny --out-dir DIR` (seconds).",
    )
    return parser


# ---------------------------------------------------------------------------- errors


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def _reading_input() -> Iterator[None]:
    """Where a command reads what it was given (options, data, model files, a run's set-up,
    a query): the library's checks there raise ``ValueError`` (a ``DataError`` names its
    file and line), ``FileNotFoundError``, or ``ImportError`` for a missing extra, and
    each is the user's to fix. Raised outside, a ``ValueError`` is a bug."""
    try:
        yield
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise UsageError(_one_line(error)) from error


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, UsageError):
        return True
    from valfusion.data.errors import DataError

    return isinstance(error, DataError)


def _run_command(args: argparse.Namespace, prog: str) -> int:
    """Run the sub-command with each warning (an unknown query text, a missing glyph)
    printed as one line, like its errors."""

    def one_line_warning(message: Warning | str, *_: object, **__: object) -> None:
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings(), log_to_console(prog):
        warnings.showwarning = one_line_warning
        return int(args.func(args) or 0)



def _quiet_hugging_face_progress() -> None:
    """``--no-progress`` also silences the Hugging Face libraries' own progress bars
    (transformers' "Loading weights", hub downloads) when a transformer text encoder loads.

    Both read ``HF_HUB_DISABLE_PROGRESS_BARS`` when first imported; a library already
    imported (``torchmetrics`` imports transformers when it is installed) is told directly.
    A value the user set in the environment is kept.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()

def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``valfusion`` command.

    A user mistake (a bad option, config file, path or data; a ``--resume`` that would
    change the run) is one line on stderr, with its traceback under ``valfusion --debug``;
    any other exception is a bug and prints its traceback.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success; 1 when training stopped on a non-finite loss or a
        data error after saving its state, or on an internal error; 2 for a user mistake;
        130 (SIGINT) or 143 (SIGTERM) when stopped by a signal (training saves its state
        first).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) > 1 and argv[0] == "bench" and argv[1] not in ("-h", "--help"):
        # Everything after `bench` belongs to `python -m benchmarks`, options included.
        args = argparse.Namespace(command="bench", func=_cmd_bench, bench_args=argv[1:], debug=False)
    else:
        args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"valfusion {args.command}"
    if getattr(args, "no_progress", False):
        _quiet_hugging_face_progress()
    try:
        _set_threads(args)
        return _run_command(args, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _is_user_error(error):
            traceback.print_exc()
            print(f"{prog}: internal error (a bug, not a mistake in the command): see the traceback above", file=sys.stderr)
            return EXIT_FAILED
        if args.debug:
            traceback.print_exception(type(error), error, error.__traceback__)
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
