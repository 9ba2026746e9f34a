"""Command line: `python -m training train|retrain|rollback|verify|quality`.

Errors print one line and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from bundle import cpus
from bundle.integrity import BundleError
from training.config import ModelConfig, TrainConfig
from training.errors import TrainingError

MODEL_FLAGS = ("hidden", "activation", "dropout", "init")
INTERRUPTED = 130


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,64, got {text!r}") from None


def _columns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and publish it as a new version")
    train.add_argument("--dataset", "--data", dest="dataset", help="built-in name or a .csv/.parquet file")
    train.add_argument("--name", required=True, help="model name in the repository")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --workdir")
    _training_flags(train)

    retrain = commands.add_parser(
        "retrain", help="train a challenger with the served version's configuration; publish it only if not worse"
    )
    retrain.add_argument("--name", required=True, help="the model to retrain (its served version is the champion)")
    retrain.add_argument("--dataset", "--data", dest="dataset", help="new data (default: the champion's dataset)")
    retrain.add_argument("--f1-tolerance", type=float, help="macro-F1 may drop by at most this much (default 0.01)")
    retrain.add_argument("--max-recall-drop", type=float, help="most any class's recall may drop (default 0.05)")
    retrain.add_argument("--allow-new-classes", action="store_true", help="accept classes the champion lacks")
    retrain.add_argument("--since", help="DATA=feedback: labels received since (an age like 7d, or an ISO date)")
    retrain.add_argument("--mix-original", action="store_true", help="DATA=feedback: add the champion's dataset")
    retrain.add_argument(
        "--canary",
        type=float,
        metavar="PERCENT",
        help="keep the champion serving and start the challenger as an automatic canary at PERCENT %%",
    )
    retrain.add_argument("--server", default="http://127.0.0.1:8000", help="--canary: the running server")
    _training_flags(retrain)

    rollback = commands.add_parser("rollback", help="make an earlier version the served one (nothing is deleted)")
    rollback.add_argument("--name", required=True)
    rollback.add_argument("--version", type=int, help="default: the newest verifiable version below the served one")
    rollback.add_argument("--unpin", action="store_true", help="undo: serve the newest version again")
    rollback.add_argument("--repository", type=Path, default=Path("models"))

    verify = commands.add_parser("verify", help="re-check hashes and ONNX parity of a published version")
    verify.add_argument("folder", type=Path, help="<repository>/<name>/<version>")

    quality = commands.add_parser("quality", help="ours vs scikit-learn's MLPClassifier on every built-in dataset")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--datasets", type=_columns, help="comma-separated subset of the built-ins")
    quality.add_argument("--repeats", type=int, help="runs per side; the fastest counts (default: 5)")
    return parser


def _training_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train and retrain (for retrain they override the champion's recorded configuration)."""
    parser.add_argument("--label-column")
    parser.add_argument("--features", type=_columns, help="comma-separated feature columns (default: all others)")
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--workdir", type=Path, help="checkpoint folder for the run (default: runs/<name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--hidden", type=_hidden, help="hidden layer sizes, e.g. 128,64")
    parser.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "leaky_relu", "gelu"])
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--init", choices=["kaiming", "xavier", "default"])
    parser.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--min-delta", type=float, help="early stopping: a new best must be this fraction lower")
    parser.add_argument("--lr-patience", type=int)
    parser.add_argument("--lr-factor", type=float)
    parser.add_argument("--class-weights", choices=["none", "balanced"])
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--test-fraction", type=float)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        help="fit temperature scaling on the validation split into model.onnx (default: on; --no-calibrate: off)",
    )


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The training settings given on the command line, shaped like `TrainConfig` (model flags nested)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    model = {k: given.pop(k) for k in MODEL_FLAGS if k in given}
    fields = {k: v for k, v in given.items() if k in TrainConfig.model_fields}
    return {**fields, "model": model} if model else fields


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = overrides_from_args(args)
    model = ModelConfig(**overrides.pop("model", {}))
    return TrainConfig(**overrides, model=model)


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        flag = "--" + str(e["loc"][-1]).replace("_", "-") if e["loc"] else "settings"
        parts.append(f"{flag}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


def interrupted(message: str) -> int:
    """Report a Ctrl-C that was handled, and make sure the process then exits with 130, not by SIGINT.

    CPython remembers a KeyboardInterrupt that propagated out of any `exec()` or `eval()` of a string, even when
    the program catches it later; `python -m` then ends by re-raising SIGINT at itself after a clean shutdown
    (`_Py_UnhandledKeyboardInterrupt`, `exit_sigint` in Modules/main.c), so the caller sees a death by signal
    (-2) instead of our exit code. `dataclasses` and `typing` build code from strings, so a Ctrl-C that lands
    while a module defining dataclasses is first imported sets that record: exporting the model imports
    torch.onnx's exporter, and a third of the Ctrl-Cs sent 110-120 ms into an export died by SIGINT here.
    A string `exec` that ends normally resets the record (CPython resets it at every such call), and this one
    runs only after the interrupt was handled, so a genuinely unhandled second Ctrl-C still ends by SIGINT.
    """
    exec("pass")  # clears _Py_UnhandledKeyboardInterrupt: see the docstring
    print(message, file=sys.stderr)
    return INTERRUPTED


def _train(args: argparse.Namespace) -> int:
    from training import pipeline  # torch is imported only for commands that need it

    # A process started in the background by a non-interactive shell inherits SIGINT as ignored; restore
    # Ctrl-C so an interrupt always stops at a checkpoint boundary and can be resumed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = args.workdir or pipeline.default_workdir(args.name)
    if args.resume:
        config = pipeline.resume_config(workdir, args.name)
    else:
        if not args.dataset:
            raise TrainingError("--dataset is required (a built-in name or a .csv/.parquet file)")
        config = config_from_args(args)
    try:
        folder, manifest = pipeline.train(config, args.repository, workdir, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        return interrupted(
            f"\ninterrupted; continue with: python -m training train --name {config.name} --resume"
            + (f" --workdir {workdir}" if args.workdir else "")
        )
    metrics = manifest.metrics
    print(
        f"published {folder} — test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"log-loss {metrics['log_loss']:.4f}, ECE {metrics['ece']:.4f}"
        + (f" (temperature {manifest.calibration.temperature:.3f})" if manifest.calibration else "")
    )
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from training import pipeline, retrain

    signal.signal(signal.SIGINT, signal.default_int_handler)
    overrides = overrides_from_args(args)
    overrides.pop("dataset", None)
    bounds = {k: getattr(args, k) for k in ("f1_tolerance", "max_recall_drop") if getattr(args, k) is not None}
    gate = retrain.Gate(**bounds, allow_new_classes=args.allow_new_classes)
    workdir = args.workdir or pipeline.default_workdir(args.name)
    if args.dataset == "feedback":
        args.dataset = _served_traffic(args, workdir, overrides)
    try:
        folder, manifest, comparison = retrain.retrain(
            args.name, args.repository, workdir, gate, args.dataset, overrides, progress=not args.quiet,
            keep_champion=args.canary is not None,
        )  # fmt: skip
    except retrain.ChallengerRejected as e:
        print(e.comparison.table())
        print(f"not published: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return interrupted("\ninterrupted; run the retrain again (a version is published whole or not at all)")
    print(comparison.table())
    if args.canary is None:
        print(f"published {folder}: it now answers {manifest.name} requests that name no version")
        return 0
    from training import canary

    print(f"published {folder}; the champion keeps answering. {canary.start(args.server, manifest, args.canary)}")
    return 0


def _served_traffic(args: argparse.Namespace, workdir: Path, overrides: dict) -> str:
    """DATA=feedback: the prediction log's labelled rows as a file (training/feedback.py); returns its path."""
    from training import feedback, retrain

    _, champion = retrain.served_version(args.repository, args.name)
    since = feedback.since_time(args.since)
    path, rows = feedback.export(args.name, champion.features, since, workdir / "feedback.parquet")
    print(
        f"{rows} labelled rows of {args.name} from the prediction log" + (f" since {args.since}" if args.since else "")
    )
    if args.mix_original:
        path = feedback.mixed(path, champion.dataset.source, champion.features, workdir / "feedback-mixed.parquet")
    overrides["label_column"], overrides["features"] = feedback.LABEL_COLUMN, champion.features
    return str(path)


def _rollback(args: argparse.Namespace) -> int:
    from training import retrain

    if args.unpin:
        print(f"{args.name}: unpinned; version {retrain.unpin(args.name, args.repository)} answers by default")
        return 0
    old, new = retrain.rollback(args.name, args.repository, args.version)
    print(f"{args.name}: version {new} answers by default (was {old}); nothing deleted. Undo: --unpin")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from training.verify import verify

    manifest, difference = verify(args.folder)
    print(f"ok {manifest.name}/{manifest.version}: hashes match, ONNX vs torch max difference {difference:.1e}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from training.quality import main

    repeats = {} if args.repeats is None else {"repeats": max(1, args.repeats)}  # default: quality.REPEATS
    return main(seed=args.seed, datasets=args.datasets, **repeats)


def torch_threads_within_quota() -> None:
    """Size torch's thread pool to the CPUs this process may use. torch counts the cores it can
    see, which in a container with a CPU limit are the node's: OpenMP threads beyond the quota only wait for the
    throttle. (The training loop runs on one thread anyway; export, calibration, parity and the explanation
    checks use this pool.)"""
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), cpus.usable()))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": _train, "retrain": _retrain, "rollback": _rollback, "verify": _verify, "quality": _quality}
    command = commands[args.command]
    if command is not _rollback:  # the one command that does not import torch
        torch_threads_within_quota()
    try:
        return command(args)
    except ValidationError as e:
        print(f"error: {_describe(e)}", file=sys.stderr)
        return 2
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
