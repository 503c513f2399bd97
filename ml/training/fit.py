"""The training loop: balanced sampling, augmentation, losses, per-epoch validation.

Two phases: the heads and decoder first with the ImageNet encoder frozen, then everything
with a cosine-decayed learning rate. The encoder's batch-norm statistics stay frozen
throughout (small batches would only make them noisier). The epoch with the best validation
score is kept; training stops early when it has not improved for ``patience`` epochs.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES
from ml.training.arrays import ArraySet

logger = logging.getLogger(__name__)

LOG_FIELDS = (
    "epoch",
    "phase",
    "learning_rate",
    "loss",
    "class_loss",
    "seg_loss",
    "seconds",
    "val_balanced_accuracy",
    "val_recall_normal",
    "val_recall_benign",
    "val_recall_malignant",
    "val_auc_malignant_vs_benign",
    "val_dice_lesion_mean",
    "val_normal_with_lesion_over_1pct",
    "val_score",
)


@dataclass
class FitConfig:
    image_size: int
    epochs: int
    frozen_epochs: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    weight_decay: float
    seg_loss_weight: float
    label_smoothing: float
    patience: int
    seed: int
    augment: bool
    select_best: bool  # False: keep the last epoch and never stop early
    # Fine-tuning (ml.training.finetune): images drawn per epoch (None: as many as the
    # training set), a share of the draws per source (the rest split by the usual rule),
    # and a wall-clock budget: no epoch starts that the last one says would overrun it.
    epoch_images: int | None = None
    source_shares: dict | None = None
    time_budget_s: float | None = None
    # Fine-tuning keeps every batch-norm layer's statistics (decoder and heads too), not
    # only the encoder's: batches of eight from a new site would move them away from what
    # the original sources' outlines were learned with.
    freeze_all_batchnorm: bool = False
    # Fine-tuning: L2-SP (Li et al., ICML 2018), ``anchor_strength / 2`` times the squared
    # distance of every trainable weight from where the fit started (the base's weights),
    # added to the loss: the weights are pulled back towards the base while they learn the
    # site, rather than towards zero. 0: off (training from ImageNet weights).
    anchor_strength: float = 0.0
    # Weight averaging (SWA, Izmailov et al., UAI 2018; for unseen domains SWAD, Cha et al.,
    # NeurIPS 2021): the uniform mean of the weights at the end of every epoch from this
    # one on, returned beside the best epoch's (``averaged``). Batch-norm statistics that
    # move (the decoder's and heads') are averaged with the rest. None: off.
    average_from: int | None = None


def sampling_weights(train: ArraySet, shares: dict | None = None) -> np.ndarray:
    """Per-image sampling probability: sources by 1/sqrt(size), then every class equal;
    ``shares`` then sets the total probability of some sources (fine-tuning's site source).

    The square root keeps the small Polish set from being drowned by BUSI without repeating
    its 180 images three times as often; equal class totals keep malignant (a quarter of the
    images) from being drowned by normal (BUS-UCLM is 60% normal).
    """
    weights = np.zeros(len(train))
    for source in np.unique(train.sources):
        in_source = train.sources == source
        weights[in_source] = 1.0 / np.sqrt(in_source.sum())
    for c in range(len(CLASSES)):
        in_class = train.labels == c
        if in_class.any():
            weights[in_class] /= weights[in_class].sum()
    weights /= weights.sum()
    if shares:
        rest = ~np.isin(train.sources, list(shares))
        rest_total = weights[rest].sum()
        for source, share in shares.items():
            in_source = train.sources == source
            if in_source.any():
                weights[in_source] *= share / weights[in_source].sum()
        if rest.any():
            weights[rest] *= max(0.0, 1.0 - sum(shares.values())) / rest_total
        weights /= weights.sum()
    return weights


def epoch_batches(
    train: ArraySet,
    batch_size: int,
    rng: np.random.Generator,
    *,
    images: int | None = None,
    shares: dict | None = None,
) -> Iterator[np.ndarray]:
    """One epoch (as many draws as images, or ``images``) of index batches, drawn by
    :func:`sampling_weights`."""
    draws = rng.choice(
        len(train), size=images or len(train), p=sampling_weights(train, shares)
    )
    for start in range(0, len(draws) - batch_size + 1, batch_size):
        yield draws[start : start + batch_size]


def loss_function(seg_loss_weight: float, label_smoothing: float):
    import tensorflow as tf

    classes = len(CLASSES)

    def loss_fn(labels, masks, outputs, seg_known=None):
        """seg_known (N,): 1 where the image's outline is known, 0 where it trains the
        classifier only (its segmentation output is left out of the loss)."""
        class_logits, seg_logits = outputs["class_logits"], outputs["seg_logits"]
        targets = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + (
            label_smoothing / classes
        )
        class_loss = tf.reduce_mean(
            tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=class_logits)
        )
        if seg_known is None:
            seg_known = tf.ones(tf.shape(masks)[:1])
        weight = tf.cast(seg_known, tf.float32)
        per_image = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=masks, logits=seg_logits),
            axis=[1, 2, 3],
        )
        bce = tf.reduce_sum(per_image * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)
        pixel_weight = weight[:, None, None, None]
        probabilities = tf.sigmoid(seg_logits) * pixel_weight
        masks = masks * pixel_weight
        # Dice over the whole batch, so images with empty masks (normal) do not divide by zero.
        dice = (2.0 * tf.reduce_sum(probabilities * masks) + 1.0) / (
            tf.reduce_sum(probabilities) + tf.reduce_sum(masks) + 1.0
        )
        seg_loss = bce + (1.0 - dice)
        return class_loss + seg_loss_weight * seg_loss, class_loss, seg_loss

    return loss_fn


def predict_arrays(
    model, images: np.ndarray, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Class logits (N, 3) and lesion probabilities (N, S, S) for uint8 RGB images."""
    from ml.preprocess import network_input

    logits, lesion = [], []
    for start in range(0, len(images), batch_size):
        outputs = model(
            network_input(images[start : start + batch_size]), training=False
        )
        logits.append(np.asarray(outputs["class_logits"]))
        lesion.append(1.0 / (1.0 + np.exp(-np.asarray(outputs["seg_logits"])[..., 0])))
    return np.concatenate(logits), np.concatenate(lesion)


def validate(model, val: ArraySet, batch_size: int) -> dict:
    logits, lesion = predict_arrays(model, val.images, batch_size)
    predicted_masks = lesion >= 0.5
    dice = metrics.dice_per_image(val.masks, predicted_masks).astype(float)
    dice[~val.seg_known] = np.nan
    return metrics.summary(
        val.labels,
        metrics.softmax(logits),
        dice,
        predicted_masks.reshape(len(predicted_masks), -1).mean(1),
    )


def validation_score(summary: dict) -> float:
    """Balanced recall + malignant-vs-benign AUC + lesion Dice, on the pooled validation splits."""
    auc = summary["auc_malignant_vs_benign"]
    return float(
        summary["balanced_accuracy"]
        + (0.0 if np.isnan(auc) else auc)
        + summary["dice_lesion_mean"]
    )


def fit(
    model, train: ArraySet, val: ArraySet, config: FitConfig, log_path: Path
) -> dict:
    """Train ``model`` in place; it ends with the best (or last) epoch's weights. Returns the
    history, and with ``config.average_from`` the averaged weights and the epochs in them."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from ml.model import encoder_layers
    from ml.preprocess import network_input
    from ml.training.augment import augmenter

    encoder = encoder_layers(model)
    for layer in model.layers if config.freeze_all_batchnorm else encoder:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    augment = augmenter(config.image_size, config.seed) if config.augment else None
    loss_fn = loss_function(config.seg_loss_weight, config.label_smoothing)
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = max(1, (config.epoch_images or len(train)) // config.batch_size)
    fit_started = time.perf_counter()
    start = {v.path: np.array(v.numpy()) for v in model.weights}

    def make_step(optimizer):
        variables = model.trainable_variables
        anchors = [tf.constant(start[v.path]) for v in variables]

        @tf.function
        def step(images, masks, labels, seg_known):
            images = tf.cast(images, tf.float32)
            masks = tf.cast(masks, tf.float32)
            if augment is not None:
                images, masks = augment(images, masks)
            with tf.GradientTape() as tape:
                outputs = model(network_input(images), training=True)
                loss, class_loss, seg_loss = loss_fn(
                    labels, masks[..., None], outputs, seg_known
                )
                if config.anchor_strength:
                    loss += (config.anchor_strength / 2) * tf.add_n(
                        [
                            tf.reduce_sum(tf.square(v - a))
                            for v, a in zip(variables, anchors, strict=True)
                        ]
                    )
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss, class_loss, seg_loss

        return step

    log_path.parent.mkdir(parents=True, exist_ok=True)
    best = {"score": -np.inf, "epoch": 0, "weights": None}
    averaged: list[np.ndarray] | None = None
    averaged_epochs: list[int] = []
    history = []
    with log_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for epoch in range(1, config.epochs + 1):
            frozen = epoch <= config.frozen_epochs
            if epoch == 1 or epoch == config.frozen_epochs + 1:
                for layer in encoder:
                    if not isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = not frozen
                schedule = (
                    config.head_learning_rate
                    if frozen
                    else keras.optimizers.schedules.CosineDecay(
                        config.learning_rate,
                        max(
                            1, (config.epochs - config.frozen_epochs) * steps_per_epoch
                        ),
                        alpha=0.02,
                    )
                )
                optimizer = keras.optimizers.AdamW(
                    schedule, weight_decay=config.weight_decay
                )
                step = make_step(optimizer)
            started = time.perf_counter()
            totals = np.zeros(3)
            batches = tqdm(
                epoch_batches(
                    train,
                    config.batch_size,
                    rng,
                    images=config.epoch_images,
                    shares=config.source_shares,
                ),
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
                mininterval=30,
            )
            for batch in batches:
                totals += [
                    float(v)
                    for v in step(
                        train.images[batch],
                        train.masks[batch],
                        train.labels[batch],
                        train.seg_known[batch].astype(np.float32),
                    )
                ]
            seconds = time.perf_counter() - started
            measures = validate(model, val, config.batch_size)
            score = validation_score(measures)
            row = {
                "epoch": epoch,
                "phase": "frozen" if frozen else "full",
                "learning_rate": float(
                    keras.ops.convert_to_numpy(optimizer.learning_rate)
                ),
                "loss": totals[0] / steps_per_epoch,
                "class_loss": totals[1] / steps_per_epoch,
                "seg_loss": totals[2] / steps_per_epoch,
                "seconds": round(seconds, 1),
                **{
                    name: measures[name.removeprefix("val_")]
                    for name in LOG_FIELDS
                    if name.startswith("val_") and name != "val_score"
                },
                "val_score": score,
            }
            writer.writerow(row)
            handle.flush()
            history.append(row)
            logger.info(
                "epoch %d (%s) %.0fs loss %.3f | val recall %.2f/%.2f/%.2f "
                "auc(m|b) %.3f dice %.3f score %.3f",
                epoch,
                row["phase"],
                seconds,
                row["loss"],
                measures["recall_normal"],
                measures["recall_benign"],
                measures["recall_malignant"],
                measures["auc_malignant_vs_benign"],
                measures["dice_lesion_mean"],
                score,
            )
            if config.average_from is not None and epoch >= config.average_from:
                weights = model.get_weights()
                n = len(averaged_epochs)
                averaged = (
                    [w.astype(np.float64) for w in weights]
                    if averaged is None
                    else [
                        a + (w - a) / (n + 1)
                        for a, w in zip(averaged, weights, strict=True)
                    ]
                )
                averaged_epochs.append(epoch)
            if score > best["score"] or not config.select_best:
                best = {"score": score, "epoch": epoch, "weights": model.get_weights()}
            elif epoch - best["epoch"] >= config.patience and not frozen:
                logger.info("no improvement for %d epochs; stopping", config.patience)
                break
            spent = time.perf_counter() - fit_started
            if (
                config.time_budget_s is not None
                and epoch < config.epochs
                and spent + spent / epoch > config.time_budget_s
            ):
                logger.info(
                    "time budget: %.0f s spent of %.0f s; another epoch would "
                    "overrun it; stopping after epoch %d",
                    spent,
                    config.time_budget_s,
                    epoch,
                )
                break
    model.set_weights(best["weights"])
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_score": best["score"],
        "averaged": averaged,
        "averaged_epochs": averaged_epochs,
    }
