"""Images that are not breast ultrasound, to check the out-of-distribution flag.

Generated here (documents, screenshots, blank frames, noise, gradients, chest X-ray-like and
CT-like synthetic images) plus the photographs and micrographs scikit-image ships (no
download). Nothing is fetched at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 384

DISCHARGE_SUMMARY = (
    "Discharge summary. The patient was admitted for elective surgery and recovered "
    "without complication. Medication on discharge: none. Follow-up in six weeks. "
    "Laboratory results are within normal limits. Signed electronically."
)
LOREM = DISCHARGE_SUMMARY.split()


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _document(rng: np.random.Generator) -> np.ndarray:
    page = Image.new("L", (SIZE, int(SIZE * 1.3)), 250)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=12)
    y = 16
    while y < page.height - 20:
        words = rng.choice(LOREM, size=rng.integers(4, 9))
        draw.text((16, y), " ".join(words), fill=20, font=font)
        y += 18
    return _rgb(np.asarray(page))


def _screenshot(rng: np.random.Generator) -> np.ndarray:
    screen = Image.new("RGB", (int(SIZE * 1.6), SIZE), (240, 240, 245))
    draw = ImageDraw.Draw(screen)
    draw.rectangle([0, 0, screen.width, 28], fill=(40, 70, 140))
    font = ImageFont.load_default(size=13)
    draw.text((10, 7), "Hospital portal - Worklist", fill=(255, 255, 255), font=font)
    for row in range(12):
        y = 40 + row * 26
        fill = (255, 255, 255) if row % 2 else (228, 232, 240)
        draw.rectangle([10, y, screen.width - 10, y + 24], fill=fill)
        draw.text(
            (16, y + 5),
            f"Study {rng.integers(1000, 9999)}  benign  0.{rng.integers(10, 99)}",
            fill=(30, 30, 30),
            font=font,
        )
    return np.asarray(screen)


def _chest_xray(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("L", (SIZE, SIZE), 30)
    draw = ImageDraw.Draw(image)
    draw.ellipse([40, 20, SIZE - 40, SIZE + 60], fill=190)  # the body
    for side in (0, 1):  # dark lungs
        x0 = 70 if side == 0 else SIZE // 2 + 15
        draw.ellipse([x0, 60, x0 + 115, 320], fill=60)
    for rib in range(8):  # ribs as bright arcs
        y = 70 + rib * 30
        draw.arc([60, y, SIZE - 60, y + 60], 200, 340, fill=210, width=6)
    draw.rectangle([SIZE // 2 - 12, 30, SIZE // 2 + 12, SIZE], fill=220)  # spine
    image = image.filter(ImageFilter.GaussianBlur(3))
    noise = rng.normal(0, 6, (SIZE, SIZE))
    return _rgb(np.asarray(image, np.float64) + noise)


def _ct_slice(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse([30, 60, SIZE - 30, SIZE - 50], fill=110)  # soft tissue
    draw.ellipse([45, 75, SIZE - 45, SIZE - 65], outline=230, width=5)  # bone ring
    draw.ellipse([90, 120, 180, 260], fill=20)  # lungs / air
    draw.ellipse([SIZE - 180, 120, SIZE - 90, 260], fill=20)
    draw.ellipse([SIZE // 2 - 35, 150, SIZE // 2 + 35, 220], fill=150)  # heart
    draw.ellipse([SIZE // 2 - 12, 270, SIZE // 2 + 12, 300], fill=240)  # vertebra
    noise = rng.normal(0, 4, (SIZE, SIZE))
    return _rgb(
        np.asarray(image.filter(ImageFilter.GaussianBlur(1)), np.float64) + noise
    )


def _generated() -> dict[str, Callable[[np.random.Generator], np.ndarray]]:
    ramp = np.linspace(0, 255, SIZE)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    radius = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    return {
        "blank_black": lambda rng: _rgb(np.zeros((SIZE, SIZE))),
        "blank_white": lambda rng: _rgb(np.full((SIZE, SIZE), 255.0)),
        "blank_grey": lambda rng: _rgb(np.full((SIZE, SIZE), 128.0)),
        "uniform_noise": lambda rng: rng.integers(0, 256, (SIZE, SIZE, 3)).astype(
            np.uint8
        ),
        "gaussian_noise_grey": lambda rng: _rgb(rng.normal(128, 40, (SIZE, SIZE))),
        "gradient_horizontal": lambda rng: _rgb(np.tile(ramp, (SIZE, 1))),
        "gradient_vertical": lambda rng: _rgb(np.tile(ramp[:, None], (1, SIZE))),
        "gradient_radial": lambda rng: _rgb(255 - radius / radius.max() * 255),
        "colour_bars": lambda rng: np.repeat(
            np.array(
                [
                    [255, 255, 255],
                    [255, 255, 0],
                    [0, 255, 255],
                    [0, 255, 0],
                    [255, 0, 255],
                    [255, 0, 0],
                    [0, 0, 255],
                    [0, 0, 0],
                ],
                np.uint8,
            ),
            SIZE // 8,
            axis=0,
        )[None].repeat(SIZE, axis=0),
        "stripes": lambda rng: _rgb((np.sin(xx / 6.0) > 0) * 255.0),
        "document_1": _document,
        "document_2": _document,
        "screenshot_1": _screenshot,
        "screenshot_2": _screenshot,
        "chest_xray_like_1": _chest_xray,
        "chest_xray_like_2": _chest_xray,
        "ct_like_1": _ct_slice,
        "ct_like_2": _ct_slice,
    }


SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
)  # fmt: skip


def _skimage_images() -> dict[str, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        return {}
    images = {}
    for name in SKIMAGE_IMAGES:
        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        elif pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(
                np.uint8
            )
        if pixels.ndim == 2:
            pixels = _rgb(pixels)
        images[name] = pixels[..., :3]
    return images


def corpus(seed: int = 0, *, include_skimage: bool = True) -> dict[str, np.ndarray]:
    """Name -> RGB uint8 image, every one of them not a breast ultrasound scan."""
    rng = np.random.default_rng(seed)
    images = {name: make(rng) for name, make in _generated().items()}
    if include_skimage:
        images.update({f"photo_{k}": v for k, v in _skimage_images().items()})
    return images


def save_corpus(out_dir, seed: int = 0) -> list[str]:
    """Write the corpus as PNG files (for ``python -m ml predict`` or a manual upload)."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, pixels in corpus(seed).items():
        Image.fromarray(pixels).save(out_dir / f"{name}.png")
    return sorted(corpus(seed))
