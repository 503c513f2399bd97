"""Augmentation that imitates what differs between hospitals, scanners and operators.

Applied to a batch of RGB uint8 images and their lesion masks, before :func:`ml.preprocess
.network_input` turns them into luminance:

- geometry: random resized crop with aspect change, sometimes zoomed out onto a black
  border (other crops and fields of view), horizontal flip;
- gain, offset, contrast and gamma (time-gain compensation and display settings);
- multiplicative speckle at a random grain size, and blur (other transducers and
  frequencies);
- JPEG re-compression at a random quality (exports and PACS);
- calipers, crosses, dotted measurement lines, text and scale ticks burned in, so that
  marks stop being evidence of a lesion (BUS-UCLM marks 154 images, BUSI many);
- a colour tint (scanner display maps), which the luminance policy mostly removes.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MARK_BANK_SIZE = 96


def _random_text(rng: np.random.Generator) -> str:
    words = [
        "RT",
        "LT",
        "BREAST",
        "LAT",
        "RAD",
        "ARAD",
        "TRANS",
        "SAG",
        "cm",
        "mm",
        "L",
        "D",
    ]
    parts = [str(rng.choice(words)) for _ in range(rng.integers(1, 4))]
    if rng.random() < 0.7:
        parts.append(f"{rng.uniform(0.2, 5.0):.1f}{rng.choice(['cm', 'mm', ''])}")
    if rng.random() < 0.3:
        parts.append("".join(rng.choice(list(string.digits), size=2)) + ":00")
    return " ".join(parts)


def mark_bank(size: int, count: int = MARK_BANK_SIZE, seed: int = 7) -> np.ndarray:
    """``count`` layers of burned-in marks, (count, size, size, 2) uint8: value and alpha."""
    rng = np.random.default_rng(seed)
    bank = np.zeros((count, size, size, 2), np.uint8)
    for n in range(count):
        alpha = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(alpha)
        for _ in range(rng.integers(1, 5)):
            kind = rng.choice(["cross", "x", "caliper", "text", "ticks", "box"])
            x, y = (int(v) for v in rng.integers(8, size - 8, 2))
            arm = int(rng.integers(3, 9))
            width = int(rng.integers(1, 3))
            if kind == "cross":
                draw.line([(x - arm, y), (x + arm, y)], fill=255, width=width)
                draw.line([(x, y - arm), (x, y + arm)], fill=255, width=width)
            elif kind == "x":
                draw.line(
                    [(x - arm, y - arm), (x + arm, y + arm)], fill=255, width=width
                )
                draw.line(
                    [(x - arm, y + arm), (x + arm, y - arm)], fill=255, width=width
                )
            elif kind == "caliper":
                x2, y2 = (int(v) for v in rng.integers(8, size - 8, 2))
                for a, b in ((x, y), (x2, y2)):
                    draw.line([(a - arm, b), (a + arm, b)], fill=255, width=width)
                    draw.line([(a, b - arm), (a, b + arm)], fill=255, width=width)
                steps = max(2, int(np.hypot(x2 - x, y2 - y) // 6))
                for t in np.linspace(0, 1, steps)[1:-1]:
                    px, py = x + t * (x2 - x), y + t * (y2 - y)
                    draw.ellipse([px - 1, py - 1, px + 1, py + 1], fill=255)
            elif kind == "text":
                font = ImageFont.load_default(size=int(rng.integers(9, 16)))
                ty = int(
                    rng.choice(
                        [rng.integers(0, 20), rng.integers(size - 20, size - 8), y]
                    )
                )
                draw.text((x // 2, ty), _random_text(rng), fill=255, font=font)
            elif kind == "ticks":
                edge = int(rng.integers(2, 10))
                for ty in range(
                    int(rng.integers(0, 12)), size, int(rng.integers(10, 26))
                ):
                    draw.line(
                        [(edge, ty), (edge + int(rng.integers(3, 7)), ty)], fill=255
                    )
            else:
                w, h = (int(v) for v in rng.integers(10, 40, 2))
                draw.rectangle([x, y, x + w, y + h], outline=255, width=width)
        bank[n, ..., 1] = np.asarray(alpha)
        bank[n, ..., 0] = int(rng.choice([255, 230, 200, 20]))
    return bank


def augmenter(image_size: int, seed: int):
    """``augment(images, masks) -> (images, masks)`` for float32 RGB [0, 255] and float masks."""
    import tensorflow as tf

    bank = tf.constant(mark_bank(image_size))
    generator = tf.random.Generator.from_seed(seed)

    def uniform(shape, low, high):
        return generator.uniform(shape, low, high)

    def crop_boxes(batch):
        zoom_out = uniform((batch,), 0.0, 1.0) < 0.15
        scale = tf.where(
            zoom_out, uniform((batch,), 1.0, 1.5), uniform((batch,), 0.45, 1.0)
        )
        log_ratio = uniform((batch,), np.log(3 / 4), np.log(4 / 3))
        height = tf.sqrt(scale / tf.exp(log_ratio))
        width = tf.sqrt(scale * tf.exp(log_ratio))
        height = tf.where(zoom_out, height, tf.minimum(height, 1.0))
        width = tf.where(zoom_out, width, tf.minimum(width, 1.0))
        top = uniform((batch,), 0.0, 1.0) * (1.0 - height)
        left = uniform((batch,), 0.0, 1.0) * (1.0 - width)
        flip = uniform((batch,), 0.0, 1.0) < 0.5
        x1, x2 = left, left + width
        # A box whose x1 > x2 is sampled mirrored (tf.image.crop_and_resize).
        x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
        return tf.stack([top, x1, top + height, x2], axis=1)

    def speckle(images, batch):
        grain = generator.uniform((), 0, 3, dtype=tf.int32)
        side = tf.gather([image_size // 4, image_size // 2, image_size], grain)
        noise = generator.normal(tf.stack([batch, side, side, 1]))
        noise = tf.image.resize(noise, (image_size, image_size), method="bilinear")
        sigma = uniform((batch, 1, 1, 1), 0.0, 0.3) * tf.cast(
            uniform((batch, 1, 1, 1), 0.0, 1.0) < 0.6, tf.float32
        )
        return images * tf.exp(sigma * noise - 0.5 * sigma**2)

    def blur(images, batch):
        # Down to half size and back: a blur that costs a fraction of a convolution on CPU
        # (TensorFlow's stride-1 depthwise convolution and pooling are slow there).
        half = (image_size // 2, image_size // 2)
        blurred = tf.image.resize(
            tf.image.resize(images, half, method="area"), (image_size, image_size)
        )
        amount = uniform((batch, 1, 1, 1), 0.0, 1.0) * tf.cast(
            uniform((batch, 1, 1, 1), 0.0, 1.0) < 0.3, tf.float32
        )
        return images + amount * (blurred - images)

    def jpeg(images, batch):
        quality = generator.uniform((batch,), 30, 95, dtype=tf.int32)
        apply = uniform((batch,), 0.0, 1.0) < 0.3

        def one(args):
            image, q, on = args
            recompressed = tf.image.adjust_jpeg_quality(
                tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), q
            )
            return tf.where(on, tf.cast(recompressed, tf.float32), image)

        return tf.map_fn(one, (images, quality, apply), fn_output_signature=tf.float32)

    def marks(images, batch):
        chosen = tf.gather(
            bank, generator.uniform((batch,), 0, bank.shape[0], dtype=tf.int32)
        )
        chosen = tf.cast(chosen, tf.float32)
        chosen = tf.where(
            uniform((batch, 1, 1, 1), 0.0, 1.0) < 0.5, chosen, tf.reverse(chosen, [2])
        )
        value, alpha = chosen[..., :1], chosen[..., 1:] / 255.0
        alpha *= tf.cast(uniform((batch, 1, 1, 1), 0.0, 1.0) < 0.5, tf.float32)
        tint = uniform(
            (batch, 1, 1, 3), 0.6, 1.0
        )  # marks are often yellow, green or cyan
        return images * (1.0 - alpha) + value * tint * alpha

    def intensity(images, batch):
        gain = uniform((batch, 1, 1, 1), 0.75, 1.25)
        offset = uniform((batch, 1, 1, 1), -15.0, 15.0)
        contrast = uniform((batch, 1, 1, 1), 0.7, 1.3)
        gamma = tf.exp(uniform((batch, 1, 1, 1), -0.35, 0.35))
        mean = tf.reduce_mean(images, axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * contrast + mean
        images = tf.clip_by_value(images * gain + offset, 0.0, 255.0)
        return 255.0 * tf.pow(images / 255.0, gamma)

    def tint(images, batch):
        colour = uniform((batch, 1, 1, 3), 0.85, 1.15)
        on = tf.cast(uniform((batch, 1, 1, 1), 0.0, 1.0) < 0.3, tf.float32)
        return images * (1.0 + on * (colour - 1.0))

    def augment(images, masks):
        images = tf.cast(images, tf.float32)
        masks = tf.cast(masks, tf.float32)[..., None]
        batch = tf.shape(images)[0]
        boxes = crop_boxes(batch)
        indices = tf.range(batch)
        size = (image_size, image_size)
        images = tf.image.crop_and_resize(images, boxes, indices, size)
        masks = tf.image.crop_and_resize(masks, boxes, indices, size)[..., 0] >= 0.5
        images = intensity(images, batch)
        images = speckle(images, batch)
        images = blur(images, batch)
        images = marks(images, batch)
        images = tint(images, batch)
        images = jpeg(tf.clip_by_value(images, 0.0, 255.0), batch)
        return tf.clip_by_value(images, 0.0, 255.0), tf.cast(masks, tf.float32)

    return augment
