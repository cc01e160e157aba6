"""The ``valfusion`` command: demo, train, evaluate, search, bench.

Every sub-command explains its options with ``--help``. Exit statuses:

- 0: done;
- 1: training stopped on a failure (a non-finite loss, data that could not be read)
  after saving the state of its last completed step, named in one line on stderr;
- 2: a user mistake (a bad path, an unknown composer, a bad option value, bad data, a
  ``--resume`` that would change the run), one line on stderr, nothing trained;
- 130 / 143: stopped by SIGINT (Ctrl-C) / SIGTERM; training saves its state first and
  says in one line where, and how to resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from valfusion._version import __version__

__all__ = ["main"]

EXIT_STOPPED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake the command reports as one line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``valfusion train: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


# ---------------------------------------------------------------------------- parsing helpers


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 32,64,128, got {text!r}")
    return values


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _composers() -> tuple[str, ...]:
    from valfusion.layers import COMPOSERS

    return COMPOSERS


# ---------------------------------------------------------------------------- data options


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--image-size", type=_positive_int, default=None,
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
        "--protocol", choices=("val", "original"), default=None,
        help="FashionIQ gallery: 'val' = union of the queries' references and targets, "
        "'original' = the category's whole image split (default: val)",
    )
    group.add_argument(
        "--caption-mode", choices=("separate", "joined"), default=None,
        help="FashionIQ's two captions per pair: one query each (separate, as VAL) or one "
        "joined query (default: separate)",
    )
    group.add_argument(
        "-o", "--data-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
        help="another option of the source's loader (repeatable), e.g. -o num_train=2000 "
        "for synthetic; VALUE is read as JSON when it parses, else as a string",
    )


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader options given on the command line (not the splits, not the image size)."""
    options: dict[str, Any] = dict(args.data_option)
    if args.drop_missing_images:
        options["drop_missing_images"] = True
    if args.protocol is not None:
        options["protocol"] = args.protocol
    if args.caption_mode is not None:
        options["caption_mode"] = args.caption_mode
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
    ks = [key for key in metrics if key.startswith("recall@")]
    splits = metrics.get("splits", {})
    print(title)
    print(f"protocol: {metrics['protocol']}  (each query's reference image excluded)")
    header = "split".ljust(12) + "".join(k.replace("recall@", "R@").rjust(8) for k in ks) + "queries".rjust(10) + "gallery".rjust(10)
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
    try:
        results = run_demo(
            out, quick=args.quick, steps=args.steps, composers=args.composers, seed=args.seed,
            progress=False if args.no_progress else None,
        )
    except TrainingStopped as stopped:  # several runs: no one resume command to suggest
        _report_stopped(stopped, None)
        return _stopped_status(stopped)
    print(format_table(results))
    print()
    if args.quick:
        print("(--quick is a smoke run of the pipeline: too short for the numbers to mean much)")
    print(f"results:  {out / 'results.json'}")
    for name, path in results.get("pictures", {}).items():
        print(f"{name.replace('_', ' ')}: {path}")
    print(f"runs:     {out / 'runs'}/<composer>  (model, metrics, history, checkpoints)")
    print(f"time:     {results['seconds']:.0f} s")
    queries = results.get("queries") or []
    composer = next((c for c in ("val", *results["composers"]) if c in results["composers"]), None)
    if queries and composer is not None:
        bench = results["benchmark"]
        print("try one query yourself:")
        print(
            f"  valfusion search {out / 'runs' / composer} --image {queries[0]['image']} "
            f"--text {json.dumps(queries[0]['text'])} --gallery synthetic "
            f"-o num_test={bench['num_queries']} -o seed={bench['seed']} --exclude {queries[0]['reference']}"
        )
    return 0


_TRAIN_OPTIONS = (
    "composer", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "amp", "seed",
    "backbone", "channels", "word_dim", "text_hidden_dim", "text_dim", "loss", "temperature", "semantic_dim",
)


def _train_config(args: argparse.Namespace, image_size: int) -> Any:
    from valfusion.engine import TrainConfig

    defaults = TrainConfig()
    model: dict[str, Any] = {"image_size": image_size}
    for option, key in (
        ("composer", "composer"), ("backbone", "backbone"), ("channels", "backbone_channels"),
        ("word_dim", "word_dim"), ("text_hidden_dim", "text_hidden_dim"), ("text_dim", "text_dim"),
        ("loss", "loss"), ("temperature", "temperature"), ("semantic_dim", "semantic_dim"),
    ):
        value = getattr(args, option)
        if value is not None:
            model[key] = value

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return getattr(defaults, name) if value is None else value

    return TrainConfig(
        steps=pick("steps"), batch_size=pick("batch_size"), lr=pick("lr"), weight_decay=pick("weight_decay"),
        warmup_steps=pick("warmup_steps"), grad_clip=pick("grad_clip"), amp=pick("amp"), seed=pick("seed"),
        eval_every=pick("eval_every"), checkpoint_every=pick("checkpoint_every"),
        keep_checkpoints=pick("keep_checkpoints"), log_every=pick("log_every"),
        num_workers=pick("num_workers"), device=pick("device"), model=model,
    )


_NOT_SET = object()
_SETTINGS_THAT_MAY_CHANGE = ("eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "device")


def _saved_value(config: Any, option: str) -> Any:
    """The value a saved TrainConfig holds for a training or model option of `train`."""
    if hasattr(config, option):
        return getattr(config, option)
    model = config.model_config(1)
    return getattr(model, "backbone_channels" if option == "channels" else option)


def _data_flag(key: str) -> str:
    return {"drop_missing_images": "--drop-missing-images", "protocol": "--protocol",
            "caption_mode": "--caption-mode"}.get(key, f"-o {key}")


def _resume_settings(args: argparse.Namespace, run_dir: Path) -> tuple[Any, dict[str, Any], Any]:
    """The saved configuration, data options and image size of the run to resume.

    Options given on the command line must agree with the saved ones (those that do not
    change the weights, such as --checkpoint-every, may change); a thread count not given
    is set to the saved one.

    Raises:
        UsageError: naming every given option that differs (saved vs given).
    """
    import torch

    from valfusion.engine import IDENTITY_FILE, TRAIN_CONFIG_FILE, RunIdentity, TrainConfig
    from valfusion.engine.identity import canonical_source

    config = TrainConfig.from_dict(json.loads((run_dir / TRAIN_CONFIG_FILE).read_text()))
    identity_file = run_dir / IDENTITY_FILE
    identity = RunIdentity.from_dict(json.loads(identity_file.read_text())) if identity_file.is_file() else None
    differences = []
    for option in _TRAIN_OPTIONS:
        given, saved = getattr(args, option), _saved_value(config, option)
        if given is not None and given != saved:
            differences.append(f"--{option.replace('_', '-')}: saved {saved!r}, given {given!r}")
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
    saved = config.to_dict()
    saved.update({k: getattr(args, k) for k in _SETTINGS_THAT_MAY_CHANGE if getattr(args, k) is not None})
    return TrainConfig.from_dict(saved), options, image_size


def _report_stopped(stopped: Any, resume: str | None) -> None:
    """One line on stderr: what stopped training, where its state is, how to go on."""
    cause = stopped.__cause__
    if cause is not None and not isinstance(cause, ValueError | OSError):
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
    return 128 + stopped.signal if stopped.signal is not None else EXIT_STOPPED


def _cmd_train(args: argparse.Namespace) -> int:
    from valfusion.engine import (
        CHECKPOINT_DIR,
        RunIdentity,
        TrainingStopped,
        init_distributed,
        latest_checkpoint,
        train,
    )

    run_dir = Path(args.out)
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
        data = _load_source(args.data, options, ("train", "test"), image_size)
        if config is None:
            config = _train_config(args, _data_image_size(data, image_size))
        identity = RunIdentity.from_data(data, source=args.data, data_options=options)
        try:
            result = train(
                data, config, run_dir, resume=args.resume, identity=identity,
                progress=False if args.no_progress else None,
            )
        except TrainingStopped as stopped:
            if context.is_main or stopped.reason == "data error":
                _report_stopped(stopped, f"valfusion train --data {shlex.quote(args.data)} --out {shlex.quote(args.out)} --resume")
            return _stopped_status(stopped)
        if context.is_main and result.metrics is not None:
            _print_metrics(result.metrics, f"{config.composer} after {result.step} steps on {data.name}")
            print(f"run directory: {run_dir}  (model, train_config.json, metrics.json, history.json, checkpoints/)")
    finally:
        context.close()
    return 0


def _load_model(run_dir: str, device: str | None) -> Any:
    from valfusion.engine import resolve_device
    from valfusion.models import VAL

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"RUN_DIR: {path} is not a folder")
    if not (path / "config.json").is_file() or not (path / "model.pt").is_file():
        raise UsageError(f"RUN_DIR: {path} has no trained model (config.json, model.pt); did training finish?")
    try:
        model = VAL.from_pretrained(path)
    except ValueError as error:
        # A corrupt, unsafe or mismatched file: the library's message names it.
        raise UsageError(f"RUN_DIR: {_one_line(error).removeprefix('directory: ')}") from error
    if model.vocabulary is None:
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
    from valfusion.engine import atomic_write_json, evaluate

    model = _load_model(args.run_dir, args.device)
    image_size = args.image_size or model.config.image_size
    options = _source_options(args.data, args, image_size)
    data = _load_data(args.data, args, ("test",), image_size)
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
    try:
        check_picture_path(picture, "--picture")
    except ValueError as error:
        raise UsageError(_one_line(error)) from error
    model = _load_model(args.run_dir, args.device)
    device = next(model.parameters()).device
    image_size = args.image_size or model.config.image_size
    query = load_image(args.image, image_size)
    data = _load_data(args.gallery, args, ("test",), image_size)
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
    root = _source_checkout()
    if root is None:
        raise UsageError(
            "bench: the benchmarks ship with the source checkout (benchmarks/), not the installed "
            "package; clone the repository and run `valfusion bench` from it"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    forwarded = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    return subprocess.call([sys.executable, "-m", "benchmarks", *forwarded], cwd=root, env=env)


# ---------------------------------------------------------------------------- parser


def _add_device(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--device", default=None,
        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)",
    )


def _add_threads(parser: argparse._ActionsContainer, default: int | None = None, why: str = "") -> None:
    shown = "PyTorch's choice" if default is None else str(default)
    parser.add_argument(
        "--threads", type=_positive_int, default=default,
        help="CPU threads per process for PyTorch's kernels; 1 is much faster on a machine whose "
        f"cores are busy with other work (default: {shown}{why})",
    )


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def build_parser() -> argparse.ArgumentParser:
    """The ``valfusion`` argument parser (one sub-parser per command)."""
    composers = _composers()
    parser = _Parser(
        prog="valfusion",
        description="Composed image retrieval (image search with text feedback) with VAL and its baselines.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"valfusion {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="train VAL and every baseline on the built-in benchmark and compare them",
        formatter_class=_Formatter,
        description="The main job: the synthetic benchmark (no download), VAL and the baselines trained "
        "with the same budget, one Recall@K table (overall, per edit kind, and for edits that name a grid "
        "cell), results.json, and pictures (learning curves, attention maps, top results).",
    )
    demo.add_argument("--quick", action="store_true", help="a smoke run of the whole pipeline in about a minute (numbers not meaningful)")
    demo.add_argument("--out", default="valfusion-demo", help="folder for results.json, the pictures and one run folder per composer (default: valfusion-demo)")
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps per composer (default: 500; 30 with --quick)")
    demo.add_argument(
        "--composers", nargs="+", choices=composers, default=None, metavar="NAME",
        help=f"composers to compare, from {', '.join(composers)} (default: val tirg tirg_pooled concat image_only text_only)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the benchmark and of every run (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    _add_threads(demo, 1, ": the demo's small models gain little from more")
    demo.set_defaults(func=_cmd_demo)

    train = commands.add_parser(
        "train", help="train a model on a data source", formatter_class=_Formatter,
        description="Train one composer on SOURCE and write RUN_DIR: the model (config.json, model.pt, "
        "vocabulary.json), train_config.json, checkpoints/, history.json and metrics.json. Runs the same "
        "under `torchrun --nproc_per_node=N -m valfusion train ...` (DistributedDataParallel).\n\n"
        "SOURCE: synthetic | DIR (generic folder) | folder:DIR | fashioniq:DIR[:dress|shirt|toptee|all] "
        "| shoes:DIR | fashion200k:DIR",
    )
    train.add_argument("--data", required=True, metavar="SOURCE", help="the data source (see above)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    train.add_argument(
        "--resume", action="store_true",
        help="continue the run in RUN_DIR from its newest intact checkpoint with its saved configuration, "
        "data options, image size and thread count; a given option that differs is refused",
    )
    optim = train.add_argument_group("training (defaults: valfusion.engine.TrainConfig)")
    optim.add_argument("--composer", choices=composers, default=None, help="composition layer (default: val)")
    optim.add_argument("--steps", type=_positive_int, default=None, help="optimiser steps (default: 2000)")
    optim.add_argument("--batch-size", type=_positive_int, default=None, help="triplets per step per process (default: 32)")
    optim.add_argument("--lr", type=_positive_float, default=None, help="peak AdamW learning rate (default: 1e-3)")
    optim.add_argument("--weight-decay", type=_non_negative_float, default=None, help="AdamW weight decay on weight matrices (default: 1e-4)")
    optim.add_argument("--warmup-steps", type=_non_negative_int, default=None, help="linear warm-up steps before the cosine decay (default: 100)")
    optim.add_argument("--grad-clip", type=_non_negative_float, default=None, help="max global gradient norm, 0 disables (default: 1.0)")
    optim.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None, help="mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA) (default: off)")
    optim.add_argument("--seed", type=int, default=None, help="seed of the initialisation, data order and dropout (default: 0)")
    optim.add_argument("--eval-every", type=_non_negative_int, default=None, help="evaluate every N steps, 0 = only at the end (default: 0)")
    optim.add_argument("--checkpoint-every", type=_non_negative_int, default=None, help="checkpoint every N steps, 0 = only at the end and when stopped (default: 0)")
    optim.add_argument("--keep-checkpoints", type=_non_negative_int, default=None, help="keep the N newest checkpoints, 0 = keep all (default: 3)")
    optim.add_argument("--log-every", type=_positive_int, default=None, help="record loss and throughput every N steps (default: 10)")
    optim.add_argument("--num-workers", type=_non_negative_int, default=None, help="DataLoader worker processes (default: 0)")
    optim.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    _add_threads(optim)
    _add_device(optim)
    model = train.add_argument_group("model (defaults: valfusion.models.VALConfig)")
    model.add_argument("--backbone", choices=("small", "resnet18", "resnet34", "resnet50", "resnet101"), default=None, help="image feature pyramid; ResNets need the 'vision' extra and start untrained (default: small)")
    model.add_argument("--channels", type=_channels, default=None, help="level channels of the small backbone, e.g. 32,64,128 (default: 32,64,128)")
    model.add_argument("--word-dim", type=_positive_int, default=None, help="word embedding size (default: 300)")
    model.add_argument("--text-hidden-dim", type=_positive_int, default=None, help="LSTM hidden size (default: 1024)")
    model.add_argument("--text-dim", type=_positive_int, default=None, help="text feature size fed to the composers (default: 512)")
    model.add_argument("--loss", choices=("softmax", "triplet"), default=None, help="matching loss: batch softmax (paper) or triplet (release) (default: softmax)")
    model.add_argument("--temperature", type=_positive_float, default=None, help="softmax temperature (default: 0.1)")
    model.add_argument("--semantic-dim", type=_positive_int, default=None, help="train the visual-semantic term on the targets' side information in a space of this size (default: off)")
    _add_data_options(train)
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="Recall@K of a trained model on a data source", formatter_class=_Formatter,
        description="Evaluate the model in RUN_DIR on the evaluation split(s) of SOURCE, print the table "
        "and write RUN_DIR/evaluations/<source>-<hash>.json (recall@1/10/50 as fractions, protocol, "
        "num_queries, gallery_size, gallery_hash, dropped counts, the source and its options): one file "
        "per data source and options, so the training result RUN_DIR/metrics.json is never replaced.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `valfusion train` (or demo)")
    evaluate.add_argument("--data", required=True, metavar="SOURCE", help="the data source (as for train)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (default: 256)")
    evaluate.add_argument("--num-workers", type=_non_negative_int, default=0, help="DataLoader worker processes (default: 0)")
    _add_device(evaluate)
    _add_data_options(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    search = commands.add_parser(
        "search", help="one query: top results for an image and a text", formatter_class=_Formatter,
        description="Rank the gallery of SOURCE for one reference image and modification text, print the "
        "top results and draw them with the query's joint-attention map.",
    )
    search.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a trained model")
    search.add_argument("--image", required=True, metavar="PATH", help="the reference image file")
    search.add_argument("--text", required=True, help="the modification text, e.g. 'make the top left object red'")
    search.add_argument("--gallery", required=True, metavar="SOURCE", help="whose evaluation gallery to search (as --data for train)")
    search.add_argument(
        "--exclude", default=None, metavar="ID",
        help="a gallery image id to leave out of the ranking, e.g. the query image itself when the "
        "gallery holds it (as evaluation does)",
    )
    search.add_argument("-k", type=_positive_int, default=10, help="how many results (default: 10)")
    search.add_argument("--picture", default=None, metavar="PNG", help="where to draw the results (default: RUN_DIR/search.png)")
    search.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (default: 256)")
    _add_device(search)
    _add_data_options(search)
    search.set_defaults(func=_cmd_search)

    bench = commands.add_parser(
        "bench", help="run the benchmarks (source checkout only)", formatter_class=_Formatter,
        description="Forward every argument to `python -m benchmarks` in the source checkout.",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for `python -m benchmarks`")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _run_command(args: argparse.Namespace, prog: str) -> int:
    """Run the sub-command with each warning (an unknown query text, a missing glyph)
    printed as one line, like its errors."""

    def one_line_warning(message: Warning | str, *_: object, **__: object) -> None:
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``valfusion`` command.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success; 1 when training stopped on a non-finite loss or a
        data error after saving its state; 2 for a user mistake; 130 (SIGINT) or 143
        (SIGTERM) when stopped by a signal (training saves its state first).
    """
    from valfusion.data.errors import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) > 1 and argv[0] == "bench" and argv[1] not in ("-h", "--help"):
        # Everything after `bench` belongs to `python -m benchmarks`, options included.
        args = argparse.Namespace(command="bench", func=_cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"valfusion {args.command}"
    try:
        _set_threads(args)
        return _run_command(args, prog)
    except (UsageError, DataError, FileNotFoundError, ImportError, ValueError) as error:
        # DataError names file:line; library entry points raise ValueError naming the
        # argument and the value received: both are the user's to fix, not a traceback.
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
