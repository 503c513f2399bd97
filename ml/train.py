"""Training BUSNet on the committed BUSI split.

Two phases: the heads and decoder first with the ImageNet encoder frozen, then everything
with a cosine-decayed learning rate. The encoder's batch-norm statistics stay frozen
throughout (small batches would only make them noisier). The epoch with the best validation
score (mean class recall + mean lesion Dice) is kept; training stops early when it has not
improved for ``patience`` epochs. Probabilities are then calibrated on the validation split
by temperature scaling.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.config import CLASSES, IMAGE_SIZE, MODEL_NAME, REPO_DIR

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data_dir: Path
    split_path: Path
    out_dir: Path
    image_size: int = IMAGE_SIZE
    epochs: int = 40
    frozen_epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seg_loss_weight: float = 1.0
    patience: int = 8
    seed: int = 20261129
    limit: int | None = None  # use only this many images per split (smoke runs)
    cache_dir: Path | None = REPO_DIR / "var" / "cache"
    select_best: bool = (
        True  # False: keep the last epoch and never stop early (cross-validation)
    )
    log_path: Path | None = None


def _augment_fn(image_size: int, seed: int):
    import keras
    import tensorflow as tf

    geometric = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom((-0.15, 0.15), fill_mode="constant", seed=seed + 2),
            keras.layers.RandomTranslation(
                0.08, 0.08, fill_mode="constant", seed=seed + 3
            ),
        ],
        name="augment",
    )

    def augment(images, masks):
        images = tf.cast(images, tf.float32)
        stacked = tf.concat(
            [images, tf.cast(masks, tf.float32)[..., None] * 255.0], axis=-1
        )
        stacked = geometric(stacked, training=True)
        images, masks = stacked[..., :3], stacked[..., 3] >= 127.5
        batch = tf.shape(images)[0]
        # Ultrasound gain, contrast and gamma vary between machines and operators.
        gain = tf.random.uniform((batch, 1, 1, 1), 0.8, 1.2)
        offset = tf.random.uniform((batch, 1, 1, 1), -20.0, 20.0)
        gamma = tf.exp(tf.random.uniform((batch, 1, 1, 1), -0.25, 0.25))
        images = tf.clip_by_value(images * gain + offset, 0.0, 255.0)
        images = 255.0 * tf.pow(images / 255.0, gamma)
        noise = tf.random.normal(
            tf.shape(images), stddev=tf.random.uniform((batch, 1, 1, 1), 0.0, 6.0)
        )
        images = tf.clip_by_value(images + noise, 0.0, 255.0)
        return images, tf.cast(masks, tf.float32)

    return augment


def _losses(class_weights: np.ndarray, seg_loss_weight: float):
    import tensorflow as tf

    weights = tf.constant(class_weights, tf.float32)

    def loss_fn(labels, masks, outputs):
        class_logits, seg_logits = outputs["class_logits"], outputs["seg_logits"]
        per_image = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=class_logits
        )
        sample_weight = tf.gather(weights, labels)
        class_loss = tf.reduce_sum(per_image * sample_weight) / tf.reduce_sum(
            sample_weight
        )
        bce = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=masks, logits=seg_logits)
        )
        probabilities = tf.sigmoid(seg_logits)
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
    """Class logits (N, 3) and lesion probabilities (N, S, S) for uint8 images."""
    from ml.backbone import preprocess

    logits, lesion = [], []
    for start in range(0, len(images), batch_size):
        outputs = model(preprocess(images[start : start + batch_size]), training=False)
        logits.append(np.asarray(outputs["class_logits"]))
        lesion.append(1.0 / (1.0 + np.exp(-np.asarray(outputs["seg_logits"])[..., 0])))
    return np.concatenate(logits), np.concatenate(lesion)


def validation_score(metrics: dict) -> float:
    return float(metrics["balanced_accuracy"] + metrics["dice_lesion_mean"])


def calibrate(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Class logit bias for balanced recall, then a temperature for calibrated probabilities."""
    from ml import metrics

    class_bias = metrics.fit_class_bias(logits, labels)
    temperature = metrics.fit_temperature(logits + class_bias, labels)
    logger.info(
        "calibration on %d validation images: class bias %s, temperature %.3f",
        len(labels),
        class_bias.tolist(),
        temperature,
    )
    return class_bias, temperature


def recalibrate(
    weights: Path, data_dir: Path, split_path: Path, cache_dir: Path | None = None
) -> str:
    """Refit the calibration of saved weights on the validation split; returns the new version."""
    from ml import weights_io
    from ml.data import load_arrays, load_split
    from ml.model import build_busnet

    meta = weights_io.read_meta(weights)
    model = build_busnet(meta.image_size)
    meta = weights_io.load_into(model, weights)
    val_set = load_arrays(
        data_dir, load_split(split_path)["val"], meta.image_size, cache_dir
    )
    logits, _ = predict_arrays(model, val_set.images)
    class_bias, meta.temperature = calibrate(logits, val_set.labels)
    meta.class_bias = class_bias.tolist()
    return weights_io.save(model, weights, meta).version


def train(config: TrainConfig) -> dict:
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from ml import metrics, weights_io
    from ml.backbone import load_imagenet_weights
    from ml.config import imagenet_weights_path
    from ml.data import load_arrays, load_split
    from ml.model import build_busnet, encoder_layers

    keras.utils.set_random_seed(config.seed)
    split = load_split(config.split_path)
    if config.limit:
        # Spread across the sorted paths so that every class is represented.
        split = {
            name: paths[:: max(1, len(paths) // config.limit)][: config.limit]
            for name, paths in split.items()
        }
    train_set = load_arrays(
        config.data_dir, split["train"], config.image_size, config.cache_dir
    )
    val_set = load_arrays(
        config.data_dir, split["val"], config.image_size, config.cache_dir
    )
    counts = np.bincount(train_set.labels, minlength=len(CLASSES)).astype(np.float64)
    class_weights = counts.sum() / (len(CLASSES) * np.maximum(counts, 1))
    logger.info(
        "train %d, val %d; class counts %s, weights %s",
        len(train_set.paths),
        len(val_set.paths),
        counts.tolist(),
        np.round(class_weights, 3).tolist(),
    )

    model = build_busnet(config.image_size)
    load_imagenet_weights(model, imagenet_weights_path())
    encoder = encoder_layers(model)
    for layer in encoder:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False

    augment = _augment_fn(config.image_size, config.seed)
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            (train_set.images, train_set.masks, train_set.labels)
        )
        .shuffle(len(train_set.paths), seed=config.seed, reshuffle_each_iteration=True)
        .batch(
            config.batch_size, drop_remainder=len(train_set.paths) > config.batch_size
        )
        .map(lambda x, m, y: (*augment(x, m), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    steps_per_epoch = int(dataset.cardinality())
    loss_fn = _losses(class_weights, config.seg_loss_weight)

    def make_step(optimizer):
        variables = model.trainable_variables

        @tf.function
        def step(images, masks, labels):
            with tf.GradientTape() as tape:
                outputs = model((images - 127.0) / 128.0, training=True)
                loss, class_loss, seg_loss = loss_fn(labels, masks[..., None], outputs)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss, class_loss, seg_loss

        return step

    log_path = config.log_path or config.out_dir / "training_log.csv"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fields = [
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
        "val_auc_malignant_vs_rest",
        "val_dice_lesion_mean",
        "val_normal_with_lesion_over_1pct",
        "val_score",
    ]
    best = {"score": -np.inf, "epoch": 0, "weights": None}
    history = []
    with log_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        step = None
        for epoch in range(1, config.epochs + 1):
            frozen = epoch <= config.frozen_epochs
            if epoch == 1 or epoch == config.frozen_epochs + 1:
                for layer in encoder:
                    if not isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = not frozen
                if frozen:
                    schedule = config.head_learning_rate
                else:
                    schedule = keras.optimizers.schedules.CosineDecay(
                        config.learning_rate,
                        max(
                            1, (config.epochs - config.frozen_epochs) * steps_per_epoch
                        ),
                        alpha=0.02,
                    )
                optimizer = keras.optimizers.AdamW(
                    schedule, weight_decay=config.weight_decay
                )
                step = make_step(optimizer)
            started = time.perf_counter()
            totals = np.zeros(3)
            progress = tqdm(
                dataset,
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
            )
            for images, masks, labels in progress:
                values = np.array([float(v) for v in step(images, masks, labels)])
                totals += values
                progress.set_postfix(loss=f"{values[0]:.3f}")
            seconds = time.perf_counter() - started
            logits, lesion = predict_arrays(model, val_set.images, config.batch_size)
            predicted_masks = lesion >= 0.5
            val = metrics.summary(
                val_set.labels,
                metrics.softmax(logits),
                metrics.dice_per_image(val_set.masks, predicted_masks),
                predicted_masks.reshape(len(predicted_masks), -1).mean(1),
            )
            score = validation_score(val)
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
                    f"val_{k}": val[k]
                    for k in (
                        "balanced_accuracy",
                        "recall_normal",
                        "recall_benign",
                        "recall_malignant",
                        "auc_malignant_vs_rest",
                        "dice_lesion_mean",
                        "normal_with_lesion_over_1pct",
                    )
                },
                "val_score": score,
            }
            writer.writerow(row)
            handle.flush()
            history.append(row)
            logger.info(
                "epoch %d (%s) %.0fs loss %.3f | val recall %.2f/%.2f/%.2f auc %.3f dice %.3f score %.3f",
                epoch,
                row["phase"],
                seconds,
                row["loss"],
                val["recall_normal"],
                val["recall_benign"],
                val["recall_malignant"],
                val["auc_malignant_vs_rest"],
                val["dice_lesion_mean"],
                score,
            )
            if score > best["score"] or not config.select_best:
                best = {
                    "score": score,
                    "epoch": epoch,
                    "weights": [np.array(w) for w in model.get_weights()],
                }
            elif (
                epoch - best["epoch"] >= config.patience
                and not frozen
                and config.select_best
            ):
                logger.info("no improvement for %d epochs; stopping", config.patience)
                break

    model.set_weights(best["weights"])
    logits, _ = predict_arrays(model, val_set.images, config.batch_size)
    class_bias, temperature = calibrate(logits, val_set.labels)
    logger.info("best epoch %d (score %.3f)", best["epoch"], best["score"])
    meta = weights_io.ModelMeta(
        name=MODEL_NAME,
        version="",
        image_size=config.image_size,
        classes=list(CLASSES),
        temperature=temperature,
        class_bias=class_bias.tolist(),
        training={
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
            "best_val_score": best["score"],
            "seed": config.seed,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "split": str(config.split_path.name),
            "train_images": len(train_set.paths),
        },
    )
    meta = weights_io.save(model, config.out_dir, meta)
    (config.out_dir / "training_summary.json").write_text(
        json.dumps({"history": history, **meta.training}, indent=1)
    )
    logger.info("saved %s to %s", meta.version, config.out_dir)
    return {
        "version": meta.version,
        "best_epoch": best["epoch"],
        "temperature": temperature,
    }
