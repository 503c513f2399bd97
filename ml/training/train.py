"""``python -m ml train``: data, network, fit, calibration, out-of-distribution statistics, save."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ml.config import BACKBONE, CLASSES, IMAGE_SIZE, model_name
from ml.training.arrays import DEFAULT_CACHE_DIR, ArraySet, load_split_arrays
from ml.training.sources import SOURCES

logger = logging.getLogger(__name__)

BEST_EPOCH_DIR = "best-epoch"  # beside averaged weights: the same run's best epoch


@dataclass
class TrainConfig:
    out_dir: Path
    sources: tuple[str, ...] = tuple(SOURCES)
    image_size: int = IMAGE_SIZE
    class_head: str = "global"  # ml.config.CLASS_HEADS
    backbone: str = BACKBONE  # ml.config.BACKBONE_NAMES
    epochs: int = 24  # the schedule that trained the committed weights
    frozen_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 2e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seg_loss_weight: float = 1.0
    label_smoothing: float = 0.05
    patience: int = 8
    seed: int = 20261129
    augment: bool = True
    select_best: bool = True
    limit: int | None = None  # this many images per source and split part (smoke runs)
    epoch_images: int | None = None  # see FitConfig
    source_shares: dict | None = None
    time_budget_s: float | None = None
    average_from: int | None = None  # see FitConfig; the best epoch goes to best-epoch/
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    log_path: Path | None = None
    extra: dict = field(
        default_factory=dict
    )  # recorded in model.json (e.g. the LOSO fold)


def _limited(arrays: ArraySet, limit: int | None) -> ArraySet:
    if not limit:
        return arrays
    keep = np.zeros(len(arrays), bool)
    for source in np.unique(arrays.sources):
        where = np.nonzero(arrays.sources == source)[0]
        keep[where[:: max(1, len(where) // limit)][:limit]] = True
    return arrays.select(keep)


def encoder_features(
    model, images: np.ndarray, batch_size: int = 16, backbone: str = BACKBONE
) -> tuple[np.ndarray, list[int]]:
    """The features the out-of-distribution score uses, as the Analyzer computes them, and
    the number of channels each depth contributes."""
    from ml.explain import Explainer
    from ml.model import CLASS_GRADCAM_LAYER, SEG_GRADCAM_LAYER
    from ml.ood import feature_layers
    from ml.preprocess import network_input

    layers = feature_layers(backbone)
    explainer = Explainer(
        model,
        class_layer=CLASS_GRADCAM_LAYER,
        seg_layer=SEG_GRADCAM_LAYER,
        feature_layers=layers,
    )
    features = np.concatenate(
        [
            explainer(np.asarray(network_input(images[i : i + batch_size]))).features
            for i in range(0, len(images), batch_size)
        ]
    )
    sizes = [
        int(model.get_layer(name).output.shape[-1])
        for name in (*layers, CLASS_GRADCAM_LAYER)
    ]
    return features, sizes


def fit_ood(
    model,
    train_set: ArraySet,
    val_set: ArraySet,
    batch_size: int = 16,
    backbone: str = BACKBONE,
):
    """Out-of-distribution statistics on the training images, threshold on validation."""
    from ml import ood

    train_features, sizes = encoder_features(
        model, train_set.images, batch_size, backbone
    )
    val_features, _ = encoder_features(model, val_set.images, batch_size, backbone)
    return ood.fit(train_features, val_features, sizes)


def refit_ood(weights: Path, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> str:
    """Refit the out-of-distribution statistics of saved weights on their training sources'
    train and validation splits; the network and calibration are unchanged. Returns the new
    version (the statistics are part of the versioned archive)."""
    from ml import weights_io
    from ml.model import build_for

    meta = weights_io.read_meta(weights)
    model = build_for(meta)
    meta = weights_io.load_into(model, weights)
    sources = meta.training.get("sources", list(SOURCES))
    train_set = load_split_arrays(sources, "train", meta.image_size, cache_dir)
    val_set = load_split_arrays(sources, "val", meta.image_size, cache_dir)
    return weights_io.save(
        model,
        weights,
        meta,
        ood=fit_ood(model, train_set, val_set, backbone=meta.backbone),
    ).version


def _calibrate_and_save(
    model, out_dir: Path, config: TrainConfig, train_set, val_set, training: dict
):
    """Calibration (on the validation images) and out-of-distribution statistics (training
    and validation images) of ``model``'s present weights, saved with them to ``out_dir``;
    returns the saved, versioned metadata."""
    from ml import weights_io
    from ml.training.calibration import calibrate
    from ml.training.fit import predict_arrays

    logits, _ = predict_arrays(model, val_set.images, config.batch_size)
    class_bias, temperature = calibrate(logits, val_set.labels)
    meta = weights_io.ModelMeta(
        name=model_name(config.backbone),
        version="",
        image_size=config.image_size,
        classes=list(CLASSES),
        class_head=config.class_head,
        backbone=config.backbone,
        temperature=temperature,
        class_bias=class_bias.tolist(),
        training=training,
    )
    ood = fit_ood(model, train_set, val_set, config.batch_size, config.backbone)
    return weights_io.save(model, out_dir, meta, ood=ood)


def train(config: TrainConfig) -> dict:
    import keras

    from ml.backbone import backbone_named, load_imagenet_weights
    from ml.config import imagenet_weights_path
    from ml.model import build_busnet
    from ml.training.fit import FitConfig, fit, validate, validation_score

    keras.utils.set_random_seed(config.seed)
    sources = list(config.sources)
    train_set = _limited(
        load_split_arrays(sources, "train", config.image_size, config.cache_dir),
        config.limit,
    )
    val_set = _limited(
        load_split_arrays(sources, "val", config.image_size, config.cache_dir),
        config.limit,
    )
    logger.info(
        "sources %s: train %d, val %d; train class counts %s",
        sources,
        len(train_set),
        len(val_set),
        np.bincount(train_set.labels, minlength=len(CLASSES)).tolist(),
    )
    model = build_busnet(
        config.image_size, class_head=config.class_head, backbone=config.backbone
    )
    load_imagenet_weights(
        model, imagenet_weights_path(config.backbone), backbone_named(config.backbone)
    )
    # The fit's settings training has (fine-tuning's own, such as freezing every batch
    # norm, keep their defaults; a required one missing fails here).
    fit_config = FitConfig(
        **{
            name: getattr(config, name)
            for name in FitConfig.__dataclass_fields__
            if hasattr(config, name)
        }
    )
    log_path = config.log_path or config.out_dir / "training_log.csv"
    fitted = fit(model, train_set, val_set, fit_config, log_path)

    training = {
        "sources": sources,
        "best_epoch": fitted["best_epoch"],
        "epochs_run": len(fitted["history"]),
        "best_val_score": fitted["best_score"],
        "seed": config.seed,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "augment": config.augment,
        "train_images": len(train_set),
        "val_images": len(val_set),
        # The class counts the calibration was fitted under: the prior its posteriors
        # assume, which a site's EM prior estimate starts from (issue 16).
        "class_prior": {
            name: int((np.asarray(val_set.labels) == c).sum())
            for c, name in enumerate(CLASSES)
        },
        **config.extra,
    }
    if config.average_from is not None and fitted["averaged"] is None:
        logger.warning(
            "training stopped before epoch %d: nothing averaged; the best epoch is saved",
            config.average_from,
        )
    if fitted.get("averaged") is not None:
        # The run's best epoch is kept beside the average, calibrated and saved the same
        # way, so the two can be compared on the same held-out images (python -m ml loso).
        best_meta = _calibrate_and_save(
            model, config.out_dir / BEST_EPOCH_DIR, config, train_set, val_set, training
        )
        model.set_weights([w.astype(np.float32) for w in fitted["averaged"]])
        training = {
            **training,
            "weight_average": {
                "epochs": fitted["averaged_epochs"],
                "val_score": validation_score(
                    validate(model, val_set, config.batch_size)
                ),
                "best_epoch_model": best_meta.version,
            },
        }
    meta = _calibrate_and_save(
        model, config.out_dir, config, train_set, val_set, training
    )
    summary = {"history": fitted["history"], "config": asdict(config), **meta.training}
    (config.out_dir / "training_summary.json").write_text(
        json.dumps(summary, indent=1, default=str)
    )
    logger.info(
        "saved %s to %s (best epoch %d)",
        meta.version,
        config.out_dir,
        fitted["best_epoch"],
    )
    return {
        "version": meta.version,
        "best_epoch": fitted["best_epoch"],
        "temperature": meta.temperature,
    }
