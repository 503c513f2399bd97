"""Images that are not breast ultrasound, to check the out-of-distribution flag.

Generated here (documents, screenshots, blank frames, noise, gradients, chest X-ray-like and
CT-like synthetic images) plus the photographs and micrographs scikit-image ships (no
download). Nothing is fetched at run time.
"""

from __future__ import annotations

import functools
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


@functools.cache
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


# --- Kinds for the ultrasound gate (ml.gate), held out by kind in its evaluation. ---


def _speckle(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A B-mode-like grey speckle field (Rayleigh noise smeared along the beam)."""
    field = rng.rayleigh(1.0, (size, size))
    image = Image.fromarray((field / field.max() * 255).astype(np.uint8))
    image = image.filter(ImageFilter.BoxBlur(1)).resize((size, size))
    depth = np.linspace(1.0, 0.45, size)[:, None]
    return np.clip(np.asarray(image, np.float64) * 1.6 * depth, 0, 255)


def _jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1], as RGB floats in [0, 255]."""
    v = np.clip(values, 0, 1)[..., None]
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([red, green, blue], axis=-1) * 255


def elastography_overlay(grey_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strain-elastography frame: a box of a blended jet colour map over a B-mode image."""
    out = np.asarray(grey_rgb, np.float64).copy()
    height, width = out.shape[:2]
    h, w = int(height * rng.uniform(0.35, 0.7)), int(width * rng.uniform(0.35, 0.7))
    y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    smooth = Image.fromarray(
        (rng.random((max(h // 24, 2), max(w // 24, 2))) * 255).astype(np.uint8)
    ).resize((w, h), Image.BICUBIC)
    colour = _jet(np.asarray(smooth, np.float64) / 255)
    alpha = rng.uniform(0.5, 0.85)
    out[y : y + h, x : x + w] = (1 - alpha) * out[y : y + h, x : x + w] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def doppler_overlay(grey_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour-Doppler frame: a few small red/orange and blue/cyan flow blobs."""
    out = np.asarray(grey_rgb, np.uint8).copy()
    height, width = out.shape[:2]
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    palette = [
        (220, 30, 20),
        (255, 120, 20),
        (250, 200, 40),
        (30, 60, 230),
        (40, 180, 250),
    ]
    for _ in range(int(rng.integers(1, 6))):
        radius = max(2, int(min(height, width) * rng.uniform(0.01, 0.05)))
        cx, cy = (
            int(rng.integers(radius, width - radius)),
            int(rng.integers(radius, height - radius)),
        )
        for _ in range(int(rng.integers(1, 4))):
            r = max(1, int(radius * rng.uniform(0.4, 1.0)))
            ox, oy = rng.integers(-radius, radius + 1, 2)
            colour = palette[int(rng.integers(len(palette)))]
            draw.ellipse(
                [cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r], fill=colour
            )
    return np.asarray(image)


DOPPLER_PALETTE = (
    (220, 30, 20), (255, 120, 20), (160, 20, 20), (30, 60, 230), (40, 180, 250),
    (20, 30, 150),
)  # fmt: skip
BOX_COLOURS = ((190, 190, 190), (120, 200, 120), (60, 200, 90), (200, 190, 80))


def doppler_box_overlay(grey_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour-Doppler frame with little or no flow: the scanner's thin box outline (the
    colour region of interest) and none to a few specks of flow, one to three pixels."""
    image = Image.fromarray(np.asarray(grey_rgb, np.uint8).copy())
    draw = ImageDraw.Draw(image)
    width, height = image.size
    w, h = int(width * rng.uniform(0.3, 0.75)), int(height * rng.uniform(0.3, 0.75))
    x, y = int(rng.integers(4, width - w - 4)), int(rng.integers(4, height - h - 4))
    box = BOX_COLOURS[int(rng.integers(len(BOX_COLOURS)))]
    draw.rectangle([x, y, x + w, y + h], outline=box, width=1)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = (
            int(rng.integers(x + 2, x + w - 2)),
            int(rng.integers(y + 2, y + h - 2)),
        )
        r = int(rng.integers(0, 2))
        colour = DOPPLER_PALETTE[int(rng.integers(len(DOPPLER_PALETTE)))]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    return np.asarray(image)


def _mammogram(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("L", (SIZE, int(SIZE * 1.25)), 5)
    draw = ImageDraw.Draw(image)
    reach = int(rng.uniform(0.55, 0.8) * SIZE)
    draw.ellipse(
        [-reach, 20, reach, image.height - 20], fill=int(rng.integers(120, 170))
    )
    image = image.filter(ImageFilter.GaussianBlur(6))
    tissue = rng.normal(0, 1, (image.height // 16, SIZE // 16))
    tissue = np.asarray(
        Image.fromarray(
            ((tissue - tissue.min()) / np.ptp(tissue) * 255).astype(np.uint8)
        ).resize((SIZE, image.height), Image.BICUBIC),
        np.float64,
    )
    pixels = np.asarray(image, np.float64)
    pixels = (
        pixels + (pixels > 40) * (tissue - 128) * 0.4 + rng.normal(0, 3, pixels.shape)
    )
    return _rgb(pixels)


def _mri(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse([40, 30, SIZE - 40, SIZE - 30], fill=int(rng.integers(90, 140)))
    for _ in range(int(rng.integers(4, 9))):
        x, y = rng.integers(70, SIZE - 110, 2)
        w, h = rng.integers(20, 90, 2)
        draw.ellipse([x, y, x + w, y + h], fill=int(rng.integers(20, 250)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    return _rgb(np.asarray(image, np.float64) + rng.normal(0, 5, (SIZE, SIZE)))


def _chart(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("RGB", (int(SIZE * 1.4), SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.line(
        [40, 20, 40, SIZE - 30, image.width - 10, SIZE - 30], fill=(0, 0, 0), width=2
    )
    for series in range(int(rng.integers(1, 4))):
        colour = tuple(int(c) for c in rng.integers(0, 220, 3))
        ys = SIZE - 40 - np.cumsum(rng.normal(2, 8, 30)).clip(-200, 300)
        points = [
            (45 + i * (image.width - 60) / 29, float(np.clip(y, 25, SIZE - 35)))
            for i, y in enumerate(ys)
        ]
        draw.line(points, fill=colour, width=2)
    draw.text(
        (60, 5),
        f"Figure {rng.integers(1, 9)}",
        fill=(0, 0, 0),
        font=ImageFont.load_default(size=13),
    )
    return np.asarray(image)


def _ecg(rng: np.random.Generator) -> np.ndarray:
    width, height = int(SIZE * 1.6), SIZE
    image = Image.new("RGB", (width, height), (255, 240, 240))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 8):
        draw.line(
            [x, 0, x, height], fill=(250, 190, 190) if x % 40 else (235, 120, 120)
        )
    for y in range(0, height, 8):
        draw.line([0, y, width, y], fill=(250, 190, 190) if y % 40 else (235, 120, 120))
    period = int(rng.integers(90, 140))
    xs = np.arange(width)
    phase = (xs % period) / period
    trace = 0.1 * np.sin(2 * np.pi * phase) + np.where(
        np.abs(phase - 0.4) < 0.02, 1.0, 0.0
    )
    for row in range(3):
        base = 60 + row * 110
        points = [
            (int(x), int(base - 70 * t + rng.normal(0, 0.8)))
            for x, t in zip(xs, trace, strict=True)
        ]
        draw.line(points, fill=(10, 10, 10), width=2)
    return np.asarray(image)


def _barcode(rng: np.random.Generator) -> np.ndarray:
    cells = rng.integers(0, 2, (29, 29)) * 255
    qr = np.asarray(
        Image.fromarray(cells.astype(np.uint8)).resize(
            (SIZE - 64, SIZE - 64), Image.NEAREST
        )
    )
    page = np.full((SIZE, SIZE), 255.0)
    page[32:-32, 32:-32] = qr
    return _rgb(page)


def _endoscopy(rng: np.random.Generator) -> np.ndarray:
    """A pink-red mucosa in a dark circular field, with a bright specular highlight."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    radius = np.hypot(yy - 0.5, xx - 0.5)
    folds = np.sin(
        10 * np.hypot(yy - rng.uniform(0.3, 0.7), xx - rng.uniform(0.3, 0.7))
    )
    shade = np.clip(1.1 - 1.6 * radius, 0, 1) * (0.8 + 0.2 * folds)
    pink = np.array([200.0, 90.0, 80.0]) + rng.normal(0, 10, 3)
    pixels = shade[..., None] * pink + rng.normal(0, 3, (SIZE, SIZE, 3))
    pixels[radius > 0.47] = 0
    hy, hx = rng.uniform(0.3, 0.6, 2)
    pixels[np.hypot(yy - hy, xx - hx) < 0.03] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _dermoscopy(rng: np.random.Generator) -> np.ndarray:
    """A brown, irregular pigmented lesion on skin-coloured background."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    edge = 0.25 + 0.05 * np.sin(rng.integers(3, 7) * angle + rng.uniform(0, 6))
    lesion = np.hypot(yy - 0.5, xx - 0.5) < edge
    skin = np.array([225.0, 180.0, 160.0]) + rng.normal(0, 8, 3)
    brown = np.array([110.0, 70.0, 50.0]) + rng.normal(0, 8, 3)
    pixels = np.where(lesion[..., None], brown, skin)
    pixels += rng.normal(0, 6, (SIZE, SIZE, 1))
    blurred = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(blurred.filter(ImageFilter.GaussianBlur(2)))


def _cloud_noise(rng: np.random.Generator) -> np.ndarray:
    """Grey low-pass noise (clouds): textured like tissue at a glance, not speckle."""
    coarse = rng.normal(0, 1, (SIZE // 16, SIZE // 16))
    fine = rng.normal(0, 1, (SIZE // 4, SIZE // 4))
    layers = [
        np.asarray(
            Image.fromarray(((c - c.min()) / np.ptp(c) * 255).astype(np.uint8)).resize(
                (SIZE, SIZE), Image.BICUBIC
            ),
            np.float64,
        )
        for c in (coarse, fine)
    ]
    return _rgb(0.7 * layers[0] + 0.3 * layers[1])


def _line_drawing(rng: np.random.Generator) -> np.ndarray:
    """Black strokes on white paper: a sketch or a diagram."""
    image = Image.new("L", (SIZE, SIZE), 250)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 15))):
        points = [
            tuple(int(v) for v in rng.integers(10, SIZE - 10, 2)) for _ in range(3)
        ]
        if rng.random() < 0.5:
            draw.line(points, fill=20, width=int(rng.integers(1, 4)))
        else:
            (x0, y0), (x1, y1) = sorted(points[:2])
            draw.ellipse(
                [x0, min(y0, y1), x1 + 5, max(y0, y1) + 5], outline=20, width=2
            )
    return _rgb(np.asarray(image, np.float64))


def _speckle_colour(kind: str) -> Callable[[np.random.Generator], np.ndarray]:
    def make(rng: np.random.Generator) -> np.ndarray:
        base = _rgb(_speckle(rng))
        if kind == "doppler":
            return doppler_overlay(base, rng)
        if kind == "doppler_box":
            return doppler_box_overlay(base, rng)
        return elastography_overlay(base, rng)

    return make


def _photo_crop(name: str) -> Callable[[np.random.Generator], np.ndarray]:
    def make(rng: np.random.Generator) -> np.ndarray:
        pixels = _skimage_images()[name]
        height, width = pixels.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        h, w = max(32, int(height * scale)), max(32, int(width * scale))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = pixels[y : y + h, x : x + w]
        return crop[:, ::-1] if rng.random() < 0.5 else crop

    return make


GREY_PHOTOS = ("camera", "moon", "coins", "clock", "horse", "brick", "grass", "gravel")
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "colorwheel", "logo")
MICROGRAPHS = (
    "cell",
    "immunohistochemistry",
    "microaneurysms",
    "retina",
    "hubble_deep_field",
)
SCANNED_TEXT = ("page", "text")


def _gate_kinds() -> dict[str, tuple[Callable[[np.random.Generator], np.ndarray], ...]]:
    """Kind -> the generators that make its images; every kind is held out in turn."""
    generated = _generated()
    kinds = {
        "blank": tuple(
            generated[k] for k in ("blank_black", "blank_white", "blank_grey")
        ),
        "noise": (generated["uniform_noise"], generated["gaussian_noise_grey"]),
        "test_pattern": tuple(
            generated[k]
            for k in (
                "gradient_horizontal",
                "gradient_vertical",
                "gradient_radial",
                "colour_bars",
                "stripes",
            )
        ),
        "document": (_document,),
        "screenshot": (_screenshot,),
        "chest_xray_like": (_chest_xray,),
        "ct_like": (_ct_slice,),
        "mammogram_like": (_mammogram,),
        "mri_like": (_mri,),
        "chart": (_chart,),
        "ecg": (_ecg,),
        "barcode": (_barcode,),
        "doppler_like": (_speckle_colour("doppler"),),
        "elastography_like": (_speckle_colour("elastography"),),
        "doppler_box_like": (_speckle_colour("doppler_box"),),
        "endoscopy_like": (_endoscopy,),
        "dermoscopy_like": (_dermoscopy,),
        "cloud_noise": (_cloud_noise,),
        "line_drawing": (_line_drawing,),
    }
    if _skimage_images():
        kinds["grey_photo"] = tuple(_photo_crop(n) for n in GREY_PHOTOS)
        kinds["colour_photo"] = tuple(_photo_crop(n) for n in COLOUR_PHOTOS)
        kinds["micrograph"] = tuple(_photo_crop(n) for n in MICROGRAPHS)
        kinds["scanned_text"] = tuple(_photo_crop(n) for n in SCANNED_TEXT)
    return kinds


def gate_corpus(seed: int = 0, per_kind: int = 8) -> list[tuple[str, np.ndarray]]:
    """(kind, RGB uint8 image) pairs, ``per_kind`` of each kind, the kind's generators in
    turn with their own random draws: the non-ultrasound corpus of the gate."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, makers in _gate_kinds().items():
        for i in range(per_kind):
            out.append((kind, np.ascontiguousarray(makers[i % len(makers)](rng))))
    return out
