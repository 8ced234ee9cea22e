"""CLI for the image classifier: `imagegate classify`, `imagegate classifier train-head|eval`.

`classify FILE...` prints one verdict per image (text, or JSON lines with `--json`); `classifier
train-head --data DIR --out FILE` fits trained heads on a labelled folder (`DIR/<category>/*.png`,
`DIR/safe/*.png`) and saves them bound to the embedding model; `classifier eval --data DIR` reports
precision, recall, F1 and ROC AUC per category on a labelled folder.

Must never: import torch or open_clip at import time (`imagegate --help` loads every command
module), or report a verdict without its calibration status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


def _model_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture (default %(default)s)")
    group.add_argument(
        "--pretrained",
        default=None,
        help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED}, or none with --checkpoint); "
        "with --checkpoint it only selects preprocessing and QuickGELU",
    )
    group.add_argument("--checkpoint", type=Path, help="local checkpoint file, or folder with open_clip_config.json")
    group.add_argument(
        "--checkpoint-trained", action="store_true", help="declare the checkpoint's weights trained (calibrated)"
    )
    group.add_argument("--cache-dir", type=Path, help="download cache for pretrained weights")
    group.add_argument("--offline", action="store_true", help="use cached weights only (as HF_HUB_OFFLINE=1)")
    group.add_argument("--threads", type=int, help="torch CPU threads")
    group.add_argument("--batch-size", type=int, default=16)
    return parent


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model_options = _model_options()
    classify = subparsers.add_parser(
        "classify", parents=[model_options], help="classify image files, one verdict per image"
    )
    classify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    classify.add_argument("--head", type=Path, help="trained head file (from `classifier train-head`)")
    classify.add_argument("--json", action="store_true", help="one JSON object per line")
    classify.set_defaults(func=run_classify)

    group = subparsers.add_parser("classifier", help="train and evaluate the image classifier")
    commands = group.add_subparsers(dest="classifier_command", metavar="SUBCOMMAND", required=True)
    train = commands.add_parser(
        "train-head", parents=[model_options], help="fit trained heads on DIR/<category>/*.png and DIR/safe/*.png"
    )
    train.add_argument("--data", type=Path, required=True, metavar="DIR")
    train.add_argument("--out", type=Path, required=True, metavar="FILE")
    train.add_argument("--kind", choices=("linear", "mlp"), default="linear")
    train.add_argument("--hidden", type=int, default=64, help="MLP hidden units")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--lr", type=float, default=1e-2)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=run_train_head)

    evaluate = commands.add_parser(
        "eval", parents=[model_options], help="precision, recall, F1 and ROC AUC per category on a labelled folder"
    )
    evaluate.add_argument("--data", type=Path, required=True, metavar="DIR")
    evaluate.add_argument("--head", type=Path)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=run_eval)

    serve = commands.add_parser(
        "serve",
        help="run the classifier as a service that proxies call (classifier.remote), e.g. on GPU nodes",
        description="Serve POST /v1/classify with the `classifier:` section of the config (model, "
        "thresholds, actions, batching); images from every proxy are batched together. Needs a shared "
        "token in $IMAGEGATE_CLASSIFIER_TOKEN (or --token-env) unless --no-auth is given.",
    )
    from .serve import add_config_arguments

    add_config_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=8090, help="port to listen on (default %(default)s)")
    serve.add_argument(
        "--token-env", default="IMAGEGATE_CLASSIFIER_TOKEN", help="variable holding the shared token (default %(default)s)"
    )
    serve.add_argument(
        "--no-auth", action="store_true", help="accept requests without a token (only behind a network boundary)"
    )
    serve.add_argument("--max-images", type=int, default=64, help="images per request (default %(default)s)")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """`imagegate classifier serve`: the model in a process of its own, for proxies to call."""
    import os

    from aiohttp import web

    from classifiers.errors import ClassifierError
    from classifiers.settings import ClassifierSettings

    from ..classifier_service import ServiceOptions, create_classifier_app
    from ..logs import configure_logging
    from ..settings import ConfigError
    from .serve import settings_from_args

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        return _fail(str(exc))
    section = dict(settings.classifier)
    section.pop("required", None)
    if section.pop("remote", None) is not None:
        return _fail("classifier.remote is set: that is a proxy's setting; the service loads the model itself")
    section["enabled"] = True
    try:
        classifier_settings = ClassifierSettings.model_validate(section)
    except ValueError as exc:
        return _fail(f"invalid classifier settings: {exc}")
    token = os.environ.get(args.token_env) or None
    if token is None and not args.no_auth:
        return _fail(f"${args.token_env} is not set: set the shared token, or pass --no-auth behind a network boundary")
    if args.max_images < 1:
        return _fail("--max-images must be at least 1")
    configure_logging(settings.server.log_level, settings.server.log_format)
    options = ServiceOptions(
        token=token,
        max_images=args.max_images,
        max_body_bytes=settings.server.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
    )
    app = create_classifier_app(classifier_settings, options)
    print(f"imagegate: classifier service on http://{args.host}:{args.port}/v1/classify", flush=True)
    try:
        web.run_app(
            app, host=args.host, port=args.port, print=None, access_log=None,
            shutdown_timeout=30.0, handler_cancellation=False,
        )
    except ClassifierError as exc:
        return _fail(f"the classifier could not be loaded: {exc}")
    return 0


def _settings(args: argparse.Namespace, head: Path | None = None) -> Any:
    from classifiers.settings import ClassifierSettings

    pretrained = args.pretrained
    if pretrained is None:
        pretrained = None if args.checkpoint else DEFAULT_PRETRAINED
    elif pretrained.lower() == "none":
        pretrained = None
    return ClassifierSettings(
        model=args.model,
        pretrained=pretrained,
        checkpoint=args.checkpoint,
        checkpoint_trained=args.checkpoint_trained,
        cache_dir=args.cache_dir,
        offline=args.offline,
        torch_threads=args.threads,
        batch_size=args.batch_size,
        head=head,
    )


def _fail(message: str) -> int:
    print(f"imagegate: {message}", file=sys.stderr)
    return 2


def run_classify(args: argparse.Namespace) -> int:
    from classifiers.classifier import load_classifier
    from classifiers.errors import ClassifierError, ImageDecodeError

    try:
        classifier = load_classifier(_settings(args, args.head))
    except (ClassifierError, ValueError) as error:
        return _fail(str(error))
    status = 0
    for start in range(0, len(args.files), args.batch_size):
        paths: list[Path] = args.files[start : start + args.batch_size]
        blobs: list[bytes] = []
        readable: list[Path] = []
        for path in paths:
            try:
                blobs.append(path.read_bytes())
                readable.append(path)
            except OSError as error:
                status = 1
                _print_error(path, f"cannot read: {error.strerror}", args.json)
        for path, outcome in zip(readable, classifier.classify_outcomes(blobs), strict=True):
            if isinstance(outcome, ImageDecodeError):
                status = 1
                _print_error(path, str(outcome), args.json)
            elif args.json:
                print(json.dumps({"file": str(path), **outcome.to_dict()}, sort_keys=True))
            else:
                print(f"{path}: {outcome.summary()}")
    return status


def _print_error(path: Path, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"file": str(path), "error": message}))
    else:
        print(f"{path}: error: {message}")


def _load_labelled(data: Path, decode: Any) -> tuple[list[Any], list[str]]:
    from classifiers.errors import ImageDecodeError, TrainingDataError
    from classifiers.evaluation import scan_labelled_folder

    items = scan_labelled_folder(data)
    images = []
    for item in items:
        try:
            images.append(decode(item.path.read_bytes()))
        except (ImageDecodeError, OSError) as error:
            raise TrainingDataError(f"{item.path}: {error}") from error
    return images, [item.label for item in items]


def run_train_head(args: argparse.Namespace) -> int:
    from classifiers.decode import decode_image
    from classifiers.errors import ClassifierError
    from classifiers.heads import train_heads
    from classifiers.loader import encode_images, load_model

    try:
        settings = _settings(args)
        loaded = load_model(settings)
        images, labels = _load_labelled(args.data, lambda data: decode_image(data, settings.decode))
        embeddings = encode_images(loaded, images, settings.batch_size)
        head_set = train_heads(
            embeddings,
            labels,
            loaded.identity,
            kind=args.kind,
            hidden=args.hidden,
            steps=args.steps,
            lr=args.lr,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
        head_set.save(args.out)
    except (ClassifierError, ValueError) as error:
        return _fail(str(error))
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "identity": loaded.identity.to_dict(),
                    "training": head_set.training,
                    "metrics": {name: head.metrics for name, head in head_set.heads.items()},
                },
                sort_keys=True,
            )
        )
        return 0
    print(f"trained {len(head_set.heads)} head(s) on {len(labels)} images for {loaded.identity.label}")
    print(f"{'category':<14}{'train acc':>10}{'val acc':>10}{'val F1':>8}{'val AUC':>9}")
    for name, head in head_set.heads.items():
        m = head.metrics
        print(
            f"{name:<14}{_fmt(m.get('train_accuracy')):>10}{_fmt(m.get('val_accuracy')):>10}"
            f"{_fmt(m.get('val_f1')):>8}{_fmt(m.get('val_roc_auc')):>9}"
        )
    if not loaded.trained_weights:
        print("note: the embedding model is uncalibrated (random or undeclared weights)")
    print(f"saved to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from classifiers.classifier import load_classifier
    from classifiers.errors import ClassifierError
    from classifiers.evaluation import evaluate_verdicts

    try:
        classifier = load_classifier(_settings(args, args.head))
        images, labels = _load_labelled(args.data, classifier.decode)
        verdicts = [
            verdict
            for start in range(0, len(images), args.batch_size)
            for verdict in classifier.classify_images(images[start : start + args.batch_size])
        ]
    except (ClassifierError, ValueError) as error:
        return _fail(str(error))
    categories = [name for name in classifier.categories if name in set(labels)]
    report = evaluate_verdicts(
        labels,
        verdicts,
        categories,
        data_dir=str(args.data),
        model=classifier.model_label,
        method=classifier.method,
        calibrated=classifier.calibrated,
    )
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
        return 0
    print(f"{report.images} images, model {report.model}, method {report.method}"
          + ("" if report.calibrated else ", UNCALIBRATED"))
    print(f"{'category':<14}{'pos':>5}{'neg':>5}{'precision':>11}{'recall':>8}{'F1':>7}{'ROC AUC':>9}")
    for name, metrics in report.categories.items():
        print(
            f"{name:<14}{metrics.positives:>5}{metrics.negatives:>5}{_fmt(metrics.precision):>11}"
            f"{_fmt(metrics.recall):>8}{_fmt(metrics.f1):>7}{_fmt(metrics.roc_auc):>9}"
        )
    print(f"safe images with any category fired: {report.safe_fired}/{report.safe_images}")
    if report.not_scored:
        print(f"folders with no matching category (not scored): {', '.join(report.not_scored)}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
