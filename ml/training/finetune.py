"""``python -m ml finetune``: continue training the shipped model on a site's own signed scans.

The site source (the portal's ``export_training_set`` folder) is split by patient into
train / val / test (``site_split.json``, written beside the weights: its test part is what
``python -m ml compare`` judges on, never seen in training or calibration). Every epoch
draws ``site_share`` of its images from the site's train part and the rest from the
original sources' train splits, so the model does not forget them. The epoch with the best
validation score (site val + the original sources' val splits) is kept.

Two guards against forgetting the original sources (LOSO showed the first recipe losing
0.03-0.07 Dice on their test splits while it learned the site): every batch-norm layer keeps
the base's statistics, and the fine-tuned weights are blended back towards the base's,
``base + a * (tuned - base)`` (weight-space ensembling, WiSE-FT: Wortsman et al., CVPR
2022), with ``a`` chosen on validation by :func:`choose_blend`: the best site validation
score among the blends that lose no more than ``blend_tolerance`` AUC or Dice on any
original source's validation images (``a = 0``, the base itself, always qualifies). Then
the calibration and the out-of-distribution statistics are refitted on the whole mix.

The schedule is sized to 2 CPU cores: few images per epoch, a small learning rate from
the base weights, and a wall-clock budget (``time_budget_s``, 20 minutes by default): no
epoch starts that the one before says would overrun what is left once the data is loaded
and the refit reserved. The seconds each stage took are recorded in ``model.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ml.training.arrays import DEFAULT_CACHE_DIR, ArraySet, concatenate, load_arrays
from ml.training.sources import SOURCES, read_manifest, register_source
from ml.training.splits import make_split, patient_groups

logger = logging.getLogger(__name__)

SITE_SPLIT_FILE = "site_split.json"


@dataclass
class FinetuneConfig:
    base: Path
    site_sources: tuple[Path, ...]
    out_dir: Path
    original_sources: tuple[str, ...] | None = None  # None: the base's sources
    epochs: int = 6
    epoch_images: int | None = None  # None: twice the site train images, at least 128
    site_share: float = 0.5
    batch_size: int = 8
    learning_rate: float = 5e-5
    patience: int = 3
    augment: bool = True
    seed: int = 20261203
    site_test_fraction: float = 0.25
    site_val_fraction: float = 0.15
    # Fine-tune on about this many site images (whole patients, stratified) and hold back
    # all the rest as the test part, instead of site_test_fraction (the LOSO figure's k).
    site_images: int | None = None
    # Original images used per source and split part (None: all): a smaller sample keeps
    # loading, validation and the refit inside the budget.
    original_limit: int | None = 120
    time_budget_s: float = 20 * 60
    refit_reserve_s: float = 240  # choosing the blend, calibration, OOD statistics
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    freeze_batchnorm: bool = True
    # Blends tried besides the base (0.0); empty: no blending, the fine-tuned weights are
    # shipped as they are (the first recipe, kept as an ablation).
    blends: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    blend_tolerance: float = 0.01
    # L2-SP towards the base's weights (ml.training.fit.FitConfig.anchor_strength); with
    # it, AdamW's decay towards zero is off. 0: the weights move freely (the blend guards).
    anchor_strength: float = 0.0


def source_sha256(root: Path) -> str:
    """The sha256 of a source's manifest and every file it lists, in manifest order."""
    root = Path(root)
    digest = hashlib.sha256((root / "MANIFEST.csv").read_bytes())
    with (root / "MANIFEST.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            for column in ("path", "mask_path", "mask_paths"):
                for name in (row.get(column) or "").split(";"):
                    if name:
                        digest.update(name.encode() + b"\0")
                        digest.update(
                            hashlib.sha256((root / name).read_bytes()).digest()
                        )
    return digest.hexdigest()


def site_split(
    name: str, *, seed: int, test: float, val: float, images: int | None = None
) -> dict:
    """A patient-grouped, stratified train/val/test split of a registered site source.

    With ``images``, about that many images (whole patients) go to train + val, ``val``
    of them to val, and every other image is held back as the test part."""
    records = [r for r in read_manifest(name) if r.excluded is None]
    if not records:
        raise ValueError(f"site source {name} has no images")
    if images is not None:
        if not 0 < images < len(records):
            raise ValueError(
                f"site source {name} has {len(records)} usable images: cannot fine-tune "
                f"on {images} and hold back the rest"
            )
        used = images / len(records)
        test, val = 1 - used, val * used
    groups = patient_groups(records)
    split = make_split(
        records,
        groups,
        seed=seed,
        test_fraction=test,
        val_fraction=val,
        group_label="worst",
    )
    patients = {r.path: r.patient or r.path for r in records}
    return {
        **split,
        "patients": {part: len({patients[p] for p in split[part]}) for part in split},
        "seed": seed,
    }


def _finite(value) -> float:
    return float(value) if value is not None and np.isfinite(value) else np.nan


def _number(value) -> float | None:
    """A figure for model.json: None where it could not be scored (JSON has no NaN)."""
    value = _finite(value)
    return value if np.isfinite(value) else None


def choose_blend(rows: list[dict], tolerance: float) -> dict:
    """The blend to ship, by a rule fixed before any run.

    ``rows``: one a blend, ``{"blend", "site", "original"}``: the validation summary
    (:func:`ml.training.fit.validate`) of the site's val part, and one of each original
    source's val images (``{source: summary}``); the row with blend 0.0 is the base. A
    blend qualifies when, on every original source, neither its AUC (malignant vs benign)
    nor its Dice is more than ``tolerance`` below the base's (a measure the base cannot be
    scored on does not bind). Per source, as the target is stated: pooled, a large source's
    loss hides behind a small one's gain. Of those that qualify, the best site validation
    score wins, the smaller blend on a tie."""
    from ml.training.fit import validation_score

    base = next(row for row in rows if row["blend"] == 0.0)

    def keeps(row: dict) -> bool:
        for source, before_summary in base["original"].items():
            for name in ("auc_malignant_vs_benign", "dice_lesion_mean"):
                before = _finite(before_summary[name])
                after = _finite(row["original"][source][name])
                if np.isfinite(before) and not after >= before - tolerance:
                    return False
        return True

    qualified = [row for row in rows if keeps(row)]
    return max(
        sorted(qualified, key=lambda row: row["blend"]),
        key=lambda row: validation_score(row["site"]),
    )


def _blend(model, base_weights: list, tuned_weights: list, blend: float) -> None:
    model.set_weights(
        [b + blend * (t - b) for b, t in zip(base_weights, tuned_weights, strict=True)]
    )


def _original(
    sources: list[str], part: str, config: FinetuneConfig, size: int
) -> ArraySet:
    from ml.training.splits import load_split

    sets = []
    for source in sources:
        paths = load_split(source)[part]
        if config.original_limit:
            rng = np.random.default_rng(config.seed)
            paths = sorted(rng.permutation(paths)[: config.original_limit].tolist())
        sets.append(load_arrays(source, paths, size, config.cache_dir))
    return concatenate(sets)


def finetune(config: FinetuneConfig) -> dict:
    import keras

    from ml import weights_io
    from ml.model import build_for
    from ml.training.calibration import calibrate
    from ml.training.fit import (
        FitConfig,
        fit,
        predict_arrays,
        validate,
        validation_score,
    )
    from ml.training.train import fit_ood

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    base_meta = weights_io.read_meta(config.base)
    size = base_meta.image_size
    model = build_for(base_meta)
    base_meta = weights_io.load_into(model, config.base)
    original = list(
        config.original_sources or base_meta.training.get("sources") or list(SOURCES)
    )

    site_names, site_info, splits = [], [], {}
    train_parts, val_parts = [], []
    for root in config.site_sources:
        name = register_source(Path(root))
        split = site_split(
            name,
            seed=config.seed,
            test=config.site_test_fraction,
            val=config.site_val_fraction,
            images=config.site_images,
        )
        digest = source_sha256(Path(root))
        splits[name] = {"source_sha256": digest, **split}
        records = {r.path: r for r in read_manifest(name)}
        used = [p for part in ("train", "val", "test") for p in split[part]]
        site_info.append(
            {
                "name": name,
                "source_sha256": digest,
                "images": len(used),
                "patients": len({records[p].patient or p for p in used}),
                "split": {part: len(split[part]) for part in ("train", "val", "test")},
                "split_patients": split["patients"],
                "label_origin": dict(
                    Counter(records[p].label_origin or "unknown" for p in used)
                ),
                "without_outline": sum(not records[p].has_segmentation for p in used),
            }
        )
        site_names.append(name)
        if not split["train"] or not split["val"]:
            raise ValueError(
                f"site source {root} is too small to split by patient "
                f"(train {len(split['train'])}, val {len(split['val'])})"
            )
        train_parts.append(load_arrays(name, split["train"], size, None))
        val_parts.append(load_arrays(name, split["val"], size, None))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / SITE_SPLIT_FILE).write_text(json.dumps(splits, indent=1) + "\n")

    site_train = concatenate(train_parts)
    train_set = concatenate([site_train, _original(original, "train", config, size)])
    site_val = concatenate(val_parts)
    original_val = _original(original, "val", config, size)
    val_set = concatenate([site_val, original_val])
    loaded = time.perf_counter()
    epoch_images = config.epoch_images or max(128, 2 * len(site_train))
    shares = {name: config.site_share / len(site_names) for name in site_names}
    budget = config.time_budget_s - (loaded - started) - config.refit_reserve_s
    logger.info(
        "fine-tuning %s on %s + %s: train %d (site %d), val %d; %d images an epoch, "
        "%.0f s for fitting",
        base_meta.version,
        site_names,
        original,
        len(train_set),
        len(site_train),
        len(val_set),
        epoch_images,
        budget,
    )
    fit_config = FitConfig(
        image_size=size,
        epochs=config.epochs,
        frozen_epochs=0,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        head_learning_rate=config.learning_rate,
        weight_decay=0.0 if config.anchor_strength else 1e-4,
        seg_loss_weight=1.0,
        label_smoothing=0.05,
        patience=config.patience,
        seed=config.seed,
        augment=config.augment,
        select_best=True,
        epoch_images=epoch_images,
        source_shares=shares,
        time_budget_s=max(1.0, budget),
        freeze_all_batchnorm=config.freeze_batchnorm,
        anchor_strength=config.anchor_strength,
    )
    base_weights = model.get_weights()
    fitted = fit(
        model, train_set, val_set, fit_config, config.out_dir / "training_log.csv"
    )
    tuned_weights = model.get_weights()
    fitted_at = time.perf_counter()
    blends = []
    for blend in sorted({0.0, *config.blends}) if config.blends else ():
        _blend(model, base_weights, tuned_weights, blend)
        blends.append(
            {
                "blend": blend,
                "site": validate(model, site_val, config.batch_size),
                "original": {
                    source: validate(
                        model,
                        original_val.select(original_val.sources == source),
                        config.batch_size,
                    )
                    for source in original
                },
            }
        )
    chosen = choose_blend(blends, config.blend_tolerance) if blends else {"blend": 1.0}
    _blend(model, base_weights, tuned_weights, chosen["blend"])
    for row in blends:
        logger.info(
            "blend %.2f: site val score %.3f; val auc(m|b) / dice %s%s",
            row["blend"],
            validation_score(row["site"]),
            ", ".join(
                f"{source} {summary['auc_malignant_vs_benign']:.3f} / "
                f"{summary['dice_lesion_mean']:.3f}"
                for source, summary in row["original"].items()
            ),
            " <- chosen" if row is chosen else "",
        )
    blended_at = time.perf_counter()

    logits, _ = predict_arrays(model, val_set.images, config.batch_size)
    class_bias, temperature = calibrate(logits, val_set.labels)
    ood_model = fit_ood(
        model, train_set, val_set, config.batch_size, base_meta.backbone
    )
    meta = weights_io.ModelMeta(
        name=base_meta.name,
        version="",
        image_size=size,
        classes=list(base_meta.classes),
        class_head=base_meta.class_head,
        backbone=base_meta.backbone,
        temperature=temperature,
        class_bias=class_bias.tolist(),
        seg_threshold=base_meta.seg_threshold,
        # The gate judges the image, not the network's features: the base's still holds.
        gate=base_meta.gate,
        second_look=base_meta.second_look,
        training={
            # The original sources (what refit_ood and evaluate read by name).
            "sources": original,
            "finetuned_from": {
                "version": base_meta.version,
                "weights_sha256": base_meta.weights_sha256,
            },
            "site_sources": site_info,
            "best_epoch": fitted["best_epoch"],
            "epochs_run": len(fitted["history"]),
            "best_val_score": fitted["best_score"],
            "freeze_batchnorm": config.freeze_batchnorm,
            "anchor_strength": config.anchor_strength,
            "blend": chosen["blend"],
            "blend_tolerance": config.blend_tolerance,
            "blend_rule": "each original source" if blends else None,
            "blends": [
                {
                    "blend": row["blend"],
                    "site_val_score": validation_score(row["site"]),
                    **{
                        f"{part}_val_{name}": _number(summary[name])
                        for part, summary in (
                            ("site", row["site"]),
                            *row["original"].items(),
                        )
                        for name in ("auc_malignant_vs_benign", "dice_lesion_mean")
                    },
                }
                for row in blends
            ],
            "train_images": len(train_set),
            "site_train_images": len(site_train),
            "val_images": len(val_set),
            "epoch_images": epoch_images,
            "site_share": config.site_share,
            "original_limit": config.original_limit,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "augment": config.augment,
        },
    )
    meta = weights_io.save(model, config.out_dir, meta, ood=ood_model)
    finished = time.perf_counter()
    seconds = {
        "load": round(loaded - started, 1),
        "fit": round(fitted_at - loaded, 1),
        "blend": round(blended_at - fitted_at, 1),
        "calibration_ood": round(finished - blended_at, 1),
        "total": round(finished - started, 1),
    }
    summary = {
        "version": meta.version,
        "seconds": seconds,
        "history": fitted["history"],
        "config": asdict(config),
        **meta.training,
    }
    (config.out_dir / "finetune_summary.json").write_text(
        json.dumps(summary, indent=1, default=str) + "\n"
    )
    logger.info("fine-tuned %s -> %s in %s", base_meta.version, meta.version, seconds)
    return summary
