"""The ``valfusion`` command: demo, train, evaluate, search, bench.

Every sub-command explains its options with ``--help``. A user mistake (a bad path,
an unknown composer, a bad option value, bad data) ends with one line on stderr and
exit status 2; an interrupted command exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from valfusion._version import __version__

__all__ = ["main"]

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


def _seeds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected an integer or distinct comma-separated integers like 0,1,2, got {text!r}")
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


def _composers():
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
        help="drop triplets whose images are missing (counts are printed and recorded) "
        "instead of stopping with the first missing file",
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


def _load_data(spec: str, args: argparse.Namespace, splits: tuple[str, ...], image_size: int | None) -> Any:
    from valfusion.data.source import load_source, parse_source

    kind = parse_source(spec).kind
    options: dict[str, Any] = dict(args.data_option)
    options["splits"] = splits
    if image_size is not None:
        options["image_size"] = image_size
    elif kind != "synthetic":
        options["image_size"] = 224
    if args.drop_missing_images:
        options["drop_missing_images"] = True
    if args.protocol is not None:
        options["protocol"] = args.protocol
    if args.caption_mode is not None:
        options["caption_mode"] = args.caption_mode
    return load_source(spec, **options)


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
    from valfusion.engine.demo import format_table, run_demo

    out = Path(args.out)
    seeds = args.seed
    if args.seeds is not None:
        if len(seeds) > 1:
            raise UsageError(f"--seeds: give either --seeds N or a list of seeds with --seed, got --seed {','.join(map(str, seeds))} and --seeds {args.seeds}")
        seeds = tuple(range(seeds[0], seeds[0] + args.seeds))
    results = run_demo(
        out, quick=args.quick, steps=args.steps, composers=args.composers, seed=seeds,
        progress=False if args.no_progress else None,
    )
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
        eval_every=pick("eval_every"), checkpoint_every=pick("checkpoint_every"), log_every=pick("log_every"),
        num_workers=pick("num_workers"), device=pick("device"), model=model,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from valfusion.engine import (
        CHECKPOINT_DIR,
        TRAIN_CONFIG_FILE,
        TrainConfig,
        init_distributed,
        latest_checkpoint,
        train,
    )

    run_dir = Path(args.out)
    has_checkpoint = latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None
    if args.resume:
        if not has_checkpoint:
            raise UsageError(f"--resume: {run_dir} holds no checkpoint to resume from")
        given = [f"--{o.replace('_', '-')}" for o in _TRAIN_OPTIONS if getattr(args, o) is not None]
        if given:
            raise UsageError(
                f"--resume continues with the run's saved configuration; drop {', '.join(given)}"
            )
        saved = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text())
        saved.update(
            {k: getattr(args, k) for k in ("eval_every", "checkpoint_every", "log_every", "num_workers", "device")
             if getattr(args, k) is not None}
        )
        config = TrainConfig.from_dict(saved)
        image_size = int(config.model.get("image_size", 64))
    elif has_checkpoint:
        raise UsageError(f"--out: {run_dir} already holds a run; pass --resume to continue it or choose another folder")
    else:
        config, image_size = None, args.image_size
    context, _ = init_distributed(args.device or "auto")
    try:
        data = _load_data(args.data, args, ("train", "test"), image_size)
        if config is None:
            config = _train_config(args, _data_image_size(data, image_size))
        result = train(data, config, run_dir, resume=args.resume, progress=False if args.no_progress else None)
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
    model = VAL.from_pretrained(path)
    if model.vocabulary is None:
        raise UsageError(f"RUN_DIR: {path} has no vocabulary.json")
    return model.to(resolve_device(device or "auto")).eval()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from valfusion.engine import METRICS_FILE, atomic_write_json, evaluate

    model = _load_model(args.run_dir, args.device)
    image_size = args.image_size or model.config.image_size
    data = _load_data(args.data, args, ("test",), image_size)
    metrics = evaluate(model, data, batch_size=args.batch_size, num_workers=args.num_workers)
    metrics["composer"] = model.config.composer
    path = atomic_write_json(Path(args.run_dir) / METRICS_FILE, metrics)
    _print_metrics(metrics, f"{model.config.composer} ({args.run_dir}) on {data.name}")
    print(f"metrics: {path}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from valfusion.data.images import denormalize, load_image
    from valfusion.engine.evaluation import embed_images
    from valfusion.engine.plots import QueryPicture, plot_top_results

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
    picture = Path(args.picture) if args.picture else Path(args.run_dir) / "search.png"
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
    else:
        print(f"picture: {picture}")
    return 0


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


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None,
        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)",
    )


def _add_threads(parser: argparse.ArgumentParser, default: int | None = None, why: str = "") -> None:
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
        "cell; over several seeds: mean ± std [min, max] and VAL's lead in each seed) printed and written as "
        "results.md and results.csv, every test query's ranking (rankings/COMPOSER.csv), results.json, and "
        "pictures (learning curves, attention maps, top results with each query's correct target and rank).",
    )
    demo.add_argument("--quick", action="store_true", help="a smoke run of the whole pipeline in about a minute (numbers not meaningful)")
    demo.add_argument("--out", default="valfusion-demo", help="folder for the results, rankings, pictures and one run folder per composer and seed (default: valfusion-demo)")
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps per composer (default: 500; 30 with --quick)")
    demo.add_argument(
        "--composers", nargs="+", choices=composers, default=None, metavar="NAME",
        help=f"composers to compare, from {', '.join(composers)} (default: val tirg tirg_pooled concat image_only text_only)",
    )
    demo.add_argument(
        "--seed", type=_seeds, default=(0,), metavar="SEED[,SEED...]",
        help="seed of the benchmark and of every run; several seeds train every composer once per seed "
        "and report mean ± std [min, max] over them (default: 0)",
    )
    demo.add_argument("--seeds", type=_positive_int, default=None, metavar="N", help="N seeds, from --seed on (--seed 0 --seeds 3: seeds 0, 1, 2)")
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
    train.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its latest checkpoint (its saved configuration is used)")
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
    optim.add_argument("--checkpoint-every", type=_non_negative_int, default=None, help="checkpoint every N steps, 0 = only at the end (default: 0)")
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
        "and write RUN_DIR/metrics.json (recall@1/10/50 as fractions, protocol, num_queries, gallery_size, "
        "gallery_hash, dropped counts).",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``valfusion`` command.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user mistake, 130 when interrupted.
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
        return int(args.func(args) or 0)
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
