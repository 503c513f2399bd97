"""``python -m ml {split,train,evaluate,predict,bench}``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ml.config import DEFAULT_SPLIT_PATH, IMAGE_SIZE, busi_dir, weights_dir


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_split(args: argparse.Namespace) -> int:
    from ml.data import build_split_file

    build_split_file(args.data, args.out, seed=args.seed)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ml.train import TrainConfig, train

    config = TrainConfig(
        data_dir=args.data, split_path=args.split, out_dir=args.out, image_size=args.image_size,
        epochs=args.epochs, frozen_epochs=min(args.frozen_epochs, args.epochs), batch_size=args.batch_size,
        learning_rate=args.lr, patience=args.patience, seed=args.seed, limit=args.limit,
    )
    result = train(config)
    print(f"trained {result['version']} (best epoch {result['best_epoch']}) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    split = commands.add_parser("split", help="build the group-aware train/val/test split")
    split.add_argument("--data", type=Path, default=busi_dir())
    split.add_argument("--out", type=Path, default=DEFAULT_SPLIT_PATH)
    split.add_argument("--seed", type=int, default=20261129)
    split.set_defaults(func=cmd_split)

    train = commands.add_parser("train", help="train BUSNet and write calibrated weights")
    train.add_argument("--data", type=Path, default=busi_dir())
    train.add_argument("--split", type=Path, default=DEFAULT_SPLIT_PATH)
    train.add_argument("--out", type=Path, default=weights_dir())
    train.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--frozen-epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--patience", type=int, default=8)
    train.add_argument("--seed", type=int, default=20261129)
    train.add_argument("--limit", type=int, default=None, help="images per split (smoke runs)")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)
