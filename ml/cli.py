"""``python -m ml {split,train,evaluate,loso,predict,calibrate,fit-gate,site-curve,crop-stage,second-look,finetune,compare,loso-finetune}``; the benchmark is ``python -m bench ml``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ml.config import (
    BACKBONE,
    BACKBONE_NAMES,
    CLASS_HEADS,
    IMAGE_SIZE,
    MODEL_CARD_PATH,
    REPORT_DIR,
    weights_dir,
)
from ml.training.sources import SOURCES

BACKBONE_OPTION = {
    "choices": BACKBONE_NAMES,
    "default": BACKBONE,
    "help": "the encoder: EfficientNet-Lite0, or the larger Lite2 (model card: not adopted)",
}
AVERAGE_FROM = {
    "type": int,
    "default": None,
    "metavar": "EPOCH",
    "help": "keep the mean of the weights from this epoch on (SWA) as the model, and "
    "the same run's best epoch in best-epoch/ beside it",
}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_split(args: argparse.Namespace) -> int:
    from ml.training.splits import build_split_file

    for source in args.sources:
        build_split_file(source, seed=args.seed)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ml.training.train import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out,
        sources=tuple(args.sources),
        image_size=args.image_size,
        class_head=args.class_head,
        backbone=args.backbone,
        epochs=args.epochs,
        frozen_epochs=min(args.frozen_epochs, args.epochs),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        patience=args.patience,
        seed=args.seed,
        augment=not args.no_augment,
        limit=args.limit,
        average_from=args.average_from,
    )
    result = train(config)
    print(
        f"trained {result['version']} (best epoch {result['best_epoch']}) -> {args.out}"
    )
    return 0


def cmd_fit_ood(args: argparse.Namespace) -> int:
    from ml.training.train import refit_ood

    print(f"out-of-distribution statistics refitted: {refit_ood(args.weights)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ml.training.evaluate import evaluate
    from ml.training.model_card import write_model_card

    report = evaluate(args.weights, args.out, rounds=args.bootstrap)
    write_model_card(args.out, args.card)
    print(
        json.dumps(
            {"model_version": report["model_version"], **report["targets"]}, indent=2
        )
    )
    print(f"metrics and plots in {args.out}; model card {args.card}")
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    from ml.training.loso import leave_one_source_out

    report = leave_one_source_out(
        args.work,
        args.out,
        epochs=args.epochs,
        frozen_epochs=args.frozen_epochs,
        patience=args.patience,
        augment=not args.no_augment,
        image_size=args.image_size,
        class_head=args.class_head,
        backbone=args.backbone,
        held_out=tuple(dict.fromkeys(args.fold or args.held_out)),
        rounds=args.bootstrap,
        resume=args.resume,
        average_from=args.average_from,
    )
    for source, fold in report["folds"].items():
        if args.fold and source not in args.fold:
            continue
        figures = ", ".join(
            f"{key} {value['value']:.3f}" for key, value in fold["metrics"].items()
        )
        print(f"without {source}: {figures}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ml.predict import predict

    try:
        failures = predict(
            args.paths,
            args.out,
            weights=args.weights,
            batch_size=args.batch_size,
            overlays=args.overlays,
            calibration=args.calibration,
        )
    except ValueError as exc:  # an unreadable calibration file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failures else 0


def _prior(weights: Path, predictions: Path, names: list[str]):
    """The training calibration of the model that made the predictions (``weights``), which
    the site's fit corrects, as the portal's does; a ValueError when another model made
    them."""
    import json

    from ml.site_calibration import SiteCalibration
    from ml.weights_io import read_meta

    meta = read_meta(weights)
    made_by = {
        json.loads((predictions / f"{name}.json").read_text()).get("model_version")
        for name in names
    }
    if made_by != {meta.version}:
        raise ValueError(
            f"the predictions were made by {sorted(map(str, made_by))}, --weights is "
            f"{meta.version}: pass the weights that made them, or --no-prior"
        )
    return SiteCalibration.from_training(
        temperature=meta.temperature, class_bias=meta.class_bias
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from ml.site_calibration import (
        MIN_READS_FOR_SITE_CALIBRATION,
        evaluate_site_calibration,
        fit_site_calibration,
        read_labelled_predictions,
    )

    try:
        logits, labels, names, patients, withheld = read_labelled_predictions(
            args.predictions, args.labels
        )
        prior = None if args.no_prior else _prior(args.weights, args.predictions, names)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if withheld:
        print(f"{withheld} withheld image(s) (not a breast ultrasound) left out")
    calibration = fit_site_calibration(
        logits,
        labels,
        target_sensitivity=args.target_sensitivity,
        groups=patients,
        prior=prior,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    print(
        f"{calibration.calibration_id}: temperature {calibration.temperature:.3f}, "
        f"offsets {list(calibration.offsets)}, decision offsets "
        f"{list(calibration.decision_offsets)}, threshold {calibration.threshold} "
        f"on {calibration.n} reads -> {args.out}"
    )
    if calibration.n < MIN_READS_FOR_SITE_CALIBRATION:
        print(
            f"warning: fewer than {MIN_READS_FOR_SITE_CALIBRATION} reads; "
            "the portal keeps the training calibration below that"
        )
    if args.report is not None:
        report = evaluate_site_calibration(
            logits,
            labels,
            groups=patients,
            target_sensitivity=args.target_sensitivity,
            prior=prior,
        )
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"cross-validated: ECE {report['before']['ece']:.3f} -> "
            f"{report['after']['ece']:.3f}, sensitivity at the target "
            f"{report['after']['sensitivity']:.3f}; report {args.report}"
        )
    return 0


def cmd_fit_gate(args: argparse.Namespace) -> int:
    import json

    from ml.training.gate import gate_report

    before = json.loads(args.before.read_text()) if args.before else None
    report = gate_report(args.weights, ood_before=before)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    for variant in report["variants"]:
        for source, fold in variant["folds"].items():
            print(
                f"{variant['name']}, without {source}: held-out scans passing "
                f"{fold['held_out_scans_passing']}, Doppler withheld "
                f"{fold['doppler_withheld']}, corpus withheld (kind held out) "
                f"{fold['corpus_withheld_kind_held_out']}"
            )
    production = report["production"]
    print(
        f"gate {production['gate_id']} (threshold {production['threshold']:.3f}) "
        f"-> {args.weights / 'model.json'}; report {args.report}"
    )
    return 0


def cmd_site_curve(args: argparse.Namespace) -> int:
    import json

    from ml.training.site_curve import caution_report, site_curve

    def earlier(path):
        return json.loads(path.read_text()) if path.is_file() else None

    caution_path = args.out.parent / "caution.json"
    report = site_curve(
        args.loso, args.weights, draws=args.draws, previous=earlier(args.out)
    )
    caution = caution_report(args.weights, args.loso, previous=earlier(caution_path))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    caution_path.write_text(json.dumps(caution, indent=2) + "\n")
    if args.set_caution and caution["threshold"] is not None:
        from dataclasses import replace

        from ml.weights_io import read_meta, write_meta

        meta = read_meta(args.weights)
        write_meta(args.weights, replace(meta, caution_threshold=caution["threshold"]))
        print(
            f"caution threshold {caution['threshold']:.2f} -> {args.weights}/model.json"
        )
    for source, fold in report["folds"].items():
        row = fold["curve"].get("100")
        if row:
            print(
                f"{source} ({'committed model' if fold['held_out_in_training'] else 'fold model'}): "
                f"k=100 ECE {row['ece']['median']:.3f}, sensitivity "
                f"{row['sensitivity']['median']:.3f}, normal recall "
                f"{row['recall_normal']['median']:.3f}"
            )
    print(f"site-adaptation curve -> {args.out}")
    return 0


def cmd_second_look(args: argparse.Namespace) -> int:
    from ml.training.second_look import format_report, run

    report = run(args.weights, args.fit, args.test, args.out, args.detail)
    print(format_report(report))
    if args.out is not None:
        print(f"second look -> {args.out}")
    return 0


def cmd_crop_stage(args: argparse.Namespace) -> int:
    import json

    from ml.training.crop_stage import crop_stage_loso

    report = crop_stage_loso()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for source, fold in report["folds"].items():
        for boxes in ("predicted_box", "truth_box"):
            if boxes in fold:
                row = fold[boxes]
                print(
                    f"{source} ({boxes.replace('_', ' ')}): AUC m|b "
                    f"{row['auc_whole']:.3f} -> {row['auc_fused']:.3f}, per patient "
                    f"{row['patient_auc_whole']:.3f} -> {row['patient_auc_fused']:.3f}"
                )
    print(f"crop stage -> {args.out}")
    return 0


def _recipe(args: argparse.Namespace) -> dict:
    """The fine-tuning recipe's guards against forgetting, from the command line."""
    return {
        "freeze_batchnorm": not args.no_freeze_batchnorm,
        "blends": () if args.no_blend else tuple(args.blends),
        "blend_tolerance": args.blend_tolerance,
        "anchor_strength": args.anchor,
    }


def _recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blends",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75, 1.0],
        help="blends base + a * (tuned - base) tried besides the base itself",
    )
    parser.add_argument(
        "--no-blend",
        action="store_true",
        help="ablation: ship the fine-tuned weights as they are, no blend chosen",
    )
    parser.add_argument(
        "--blend-tolerance",
        type=float,
        default=0.01,
        help="most AUC or Dice a blend may lose on the original sources' val images",
    )
    parser.add_argument(
        "--no-freeze-batchnorm",
        action="store_true",
        help="ablation: let the decoder's and heads' batch-norm statistics move",
    )
    parser.add_argument(
        "--anchor",
        type=float,
        default=0.0,
        help="L2-SP: strength of the pull of every weight back towards the base's "
        "during fine-tuning (0: off)",
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from ml.training.finetune import FinetuneConfig, finetune

    summary = finetune(
        FinetuneConfig(
            base=args.base,
            site_sources=tuple(args.source),
            out_dir=args.out,
            epochs=args.epochs,
            epoch_images=args.epoch_images,
            site_share=args.site_share,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            augment=not args.no_augment,
            original_limit=args.original_limit or None,
            time_budget_s=args.time_budget_min * 60,
            seed=args.seed,
            **_recipe(args),
        )
    )
    print(
        f"fine-tuned {summary['finetuned_from']['version']} -> {summary['version']} "
        f"(best epoch {summary['best_epoch']} of {summary['epochs_run']}, blend "
        f"{summary['blend']:.2f}, {summary['seconds']['total']:.0f} s) in {args.out}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ml.training.compare import compare

    report = compare(
        args.baseline,
        args.candidate,
        args.source,
        args.out,
        split_file=args.split,
        original_sources=args.original_sources,
        original_limit=args.original_limit,
        rounds=args.bootstrap,
    )
    print(report["markdown"])
    return 0


def cmd_loso_finetune(args: argparse.Namespace) -> int:
    from ml.training.loso_finetune import lines, loso_finetune

    report = loso_finetune(
        args.loso,
        args.out,
        folds=tuple(dict.fromkeys(args.fold)),
        ks=tuple(args.k),
        rounds=args.bootstrap,
        resume=not args.again,
        tag=args.tag,
        recipe=_recipe(args),
    )
    for line in lines(report):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    split = commands.add_parser(
        "split", help="build a source's group-aware train/val/test split"
    )
    split.add_argument("sources", nargs="+", choices=list(SOURCES))
    split.add_argument("--seed", type=int, default=20261129)
    split.set_defaults(func=cmd_split)

    train = commands.add_parser(
        "train", help="train BUSNet on the sources' train splits; calibrated weights"
    )
    train.add_argument(
        "--sources", nargs="+", choices=list(SOURCES), default=list(SOURCES)
    )
    train.add_argument("--out", type=Path, default=weights_dir())
    train.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    train.add_argument(
        "--class-head",
        choices=CLASS_HEADS,
        default="global",
        help="what the classifier pools: the whole frame, or also the predicted lesion",
    )
    train.add_argument("--backbone", **BACKBONE_OPTION)
    train.add_argument("--epochs", type=int, default=24)
    train.add_argument("--frozen-epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--patience", type=int, default=8)
    train.add_argument("--seed", type=int, default=20261129)
    train.add_argument("--average-from", **AVERAGE_FROM)
    train.add_argument(
        "--no-augment", action="store_true", help="ablation: no augmentation"
    )
    train.add_argument(
        "--limit",
        type=int,
        default=None,
        help="images per source and split (smoke runs)",
    )
    train.set_defaults(func=cmd_train)

    fit_ood = commands.add_parser(
        "fit-ood", help="refit the out-of-distribution statistics of saved weights"
    )
    fit_ood.add_argument("--weights", type=Path, default=weights_dir())
    fit_ood.set_defaults(func=cmd_fit_ood)

    evaluate = commands.add_parser(
        "evaluate",
        help="pooled and per-source test metrics, plots, OOD check, model card",
    )
    evaluate.add_argument("--weights", type=Path, default=weights_dir())
    evaluate.add_argument("--out", type=Path, default=REPORT_DIR)
    evaluate.add_argument("--card", type=Path, default=MODEL_CARD_PATH)
    evaluate.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap rounds for 95%% intervals",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    loso = commands.add_parser(
        "loso", help="leave one source out: train on two sources, test on the third"
    )
    loso.add_argument("--work", type=Path, default=Path("var/loso"))
    loso.add_argument("--out", type=Path, default=REPORT_DIR / "loso.json")
    # The production schedule by default (python -m ml train's), so that the folds measure
    # the recipe that ships; the 12-epoch ablation rows used --epochs 12 --frozen-epochs 1.
    loso.add_argument("--epochs", type=int, default=24)
    loso.add_argument(
        "--frozen-epochs", type=int, default=2, help="epochs with the encoder frozen"
    )
    loso.add_argument(
        "--patience",
        type=int,
        default=8,
        help="early stopping after this many epochs without improvement "
        "(as long as --epochs: never)",
    )
    loso.add_argument(
        "--held-out", nargs="+", choices=list(SOURCES), default=list(SOURCES)
    )
    loso.add_argument(
        "--fold",
        action="append",
        choices=list(SOURCES),
        help="run only this held-out source's fold (repeatable); its row is merged "
        "into the existing report",
    )
    loso.add_argument(
        "--no-augment", action="store_true", help="ablation: no augmentation"
    )
    loso.add_argument("--average-from", **AVERAGE_FROM)
    loso.add_argument(
        "--image-size", type=int, default=IMAGE_SIZE, help="ablation: input size"
    )
    loso.add_argument(
        "--class-head", choices=CLASS_HEADS, default="global", help="ablation"
    )
    loso.add_argument("--backbone", **BACKBONE_OPTION)
    loso.add_argument("--bootstrap", type=int, default=1000)
    loso.add_argument(
        "--resume", action="store_true", help="reuse folds already trained"
    )
    loso.set_defaults(func=cmd_loso)

    predict = commands.add_parser("predict", help="analyse image files or folders")
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    predict.add_argument("--out", type=Path, required=True)
    predict.add_argument("--weights", type=Path, default=None)
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument(
        "--overlays",
        action="store_true",
        help="also draw the full-resolution outline and heatmap overlays",
    )
    predict.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="a site calibration (python -m ml calibrate): adds `calibration` and `suspicious`",
    )
    predict.set_defaults(func=cmd_predict)

    calibrate = commands.add_parser(
        "calibrate",
        help="fit a site calibration and operating point on predictions and signed labels",
    )
    calibrate.add_argument(
        "--predictions", type=Path, required=True, help="predict's --out"
    )
    calibrate.add_argument(
        "--labels", type=Path, required=True, help="CSV filename,label[,patient]"
    )
    calibrate.add_argument("--out", type=Path, required=True)
    calibrate.add_argument("--target-sensitivity", type=float, default=0.9)
    calibrate.add_argument(
        "--weights",
        type=Path,
        default=weights_dir(),
        help="the model that made the predictions: the fit corrects its own calibration",
    )
    calibrate.add_argument(
        "--no-prior",
        action="store_true",
        help="fit from the logits alone, not as a correction of the model's calibration",
    )
    calibrate.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the cross-validated before/after",
    )
    calibrate.set_defaults(func=cmd_calibrate)

    fit_gate = commands.add_parser(
        "fit-gate",
        help="fit the ultrasound gate into model.json (and judge it by LOSO)",
    )
    fit_gate.add_argument("--weights", type=Path, default=weights_dir())
    fit_gate.add_argument("--report", type=Path, default=REPORT_DIR / "gate.json")
    fit_gate.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a measured row for the flag it replaces",
    )
    fit_gate.set_defaults(func=cmd_fit_gate)

    curve = commands.add_parser(
        "site-curve",
        help="site calibration on k of a held-out source's reads, per LOSO fold",
    )
    curve.add_argument(
        "--loso", type=Path, default=None, help="folder of without-<source>/"
    )
    curve.add_argument("--weights", type=Path, default=weights_dir())
    curve.add_argument("--draws", type=int, default=20)
    curve.add_argument(
        "--set-caution",
        action="store_true",
        help="write the caution threshold the LOSO folds choose into --weights' model.json",
    )
    curve.add_argument("--out", type=Path, default=REPORT_DIR / "site_curve.json")
    curve.set_defaults(func=cmd_site_curve)

    crop = commands.add_parser(
        "crop-stage",
        help="a lesion-crop classifier fused with each LOSO fold model, judged per fold",
    )
    crop.add_argument("--out", type=Path, default=REPORT_DIR / "crop_stage.json")
    crop.set_defaults(func=cmd_crop_stage)

    second = commands.add_parser(
        "second-look",
        help="the model again on a zoomed crop around the lesion it found: does it pay?",
    )
    second.add_argument("--weights", type=Path, default=weights_dir())
    second.add_argument(
        "--fit",
        nargs="+",
        required=True,
        help="SOURCE:SPLIT parts the margin is chosen on (split: train, val, test, all)",
    )
    second.add_argument("--test", nargs="+", required=True, help="SOURCE:SPLIT parts")
    second.add_argument(
        "--detail",
        type=int,
        default=None,
        help="crop the scan as stored for the network (squeezed to this side) instead "
        "of the full-resolution scan",
    )
    second.add_argument("--out", type=Path, default=None)
    second.set_defaults(func=cmd_second_look)

    finetune = commands.add_parser(
        "finetune",
        help="continue training on a site's exported source mixed with the originals",
    )
    finetune.add_argument("--base", type=Path, default=weights_dir())
    finetune.add_argument(
        "--source",
        type=Path,
        nargs="+",
        required=True,
        help="folders written by the portal's export_training_set",
    )
    finetune.add_argument("--out", type=Path, required=True)
    finetune.add_argument("--epochs", type=int, default=6)
    finetune.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="images drawn an epoch (default: twice the site train images, >= 128)",
    )
    finetune.add_argument(
        "--site-share", type=float, default=0.5, help="share of draws from the site"
    )
    finetune.add_argument("--batch-size", type=int, default=8)
    finetune.add_argument("--lr", type=float, default=5e-5)
    finetune.add_argument(
        "--original-limit",
        type=int,
        default=120,
        help="original images per source and split part (0: all)",
    )
    finetune.add_argument("--time-budget-min", type=float, default=20.0)
    finetune.add_argument("--seed", type=int, default=20261203)
    finetune.add_argument("--no-augment", action="store_true")
    _recipe_arguments(finetune)
    finetune.set_defaults(func=cmd_finetune)

    compare = commands.add_parser(
        "compare",
        help="candidate vs baseline on the site's held-back split and the original "
        "test splits, with paired bootstrap intervals and verdicts",
    )
    compare.add_argument("--baseline", type=Path, required=True)
    compare.add_argument("--candidate", type=Path, required=True)
    compare.add_argument("--source", type=Path, nargs="+", required=True)
    compare.add_argument(
        "--split",
        type=Path,
        default=None,
        help="site split file (default: site_split.json beside the candidate)",
    )
    compare.add_argument("--out", type=Path, default=None)
    compare.add_argument(
        "--original-sources", nargs="*", choices=list(SOURCES), default=None
    )
    compare.add_argument(
        "--original-limit", type=int, default=None, help="images per original source"
    )
    compare.add_argument("--bootstrap", type=int, default=1000)
    compare.set_defaults(func=cmd_compare)

    loso_finetune = commands.add_parser(
        "loso-finetune",
        help="per LOSO fold: fine-tune the fold model on k of the held-out source's "
        "images, compare on the rest and on the original test splits",
    )
    loso_finetune.add_argument("--loso", type=Path, default=Path("var/loso"))
    loso_finetune.add_argument(
        "--fold", action="append", choices=list(SOURCES), required=True
    )
    loso_finetune.add_argument("--k", type=int, nargs="+", default=[100, 200])
    loso_finetune.add_argument(
        "--out", type=Path, default=REPORT_DIR / "loso_finetune.json"
    )
    loso_finetune.add_argument("--bootstrap", type=int, default=1000)
    loso_finetune.add_argument(
        "--again", action="store_true", help="redo (fold, k) runs already finished"
    )
    loso_finetune.add_argument(
        "--tag",
        default="",
        help="an ablation's name: its runs go to finetune-<k>-<tag>/ and its rows "
        "to the report under '<k>-<tag>'",
    )
    _recipe_arguments(loso_finetune)
    loso_finetune.set_defaults(func=cmd_loso_finetune)

    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)
