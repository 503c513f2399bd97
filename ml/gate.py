"""Is this a breast B-mode ultrasound at all? The gate in front of the analysis (pure numpy).

Two questions get two answers (issue 16). This module answers the first: photos,
documents, screenshots, other modalities, blank or noise frames and colour-Doppler or
elastography frames are *withheld* (no label, probabilities or outline). The second, "a
breast ultrasound unusual for this model", stays the Mahalanobis caution of ``ml.ood``.

The gate does not look through the task network: a few colour, intensity and texture
statistics of the image at the network's input size (what a B-mode frame is: grey speckle
with a dark background; a Doppler or elastography frame carries saturated colour map
pixels; a document or screenshot is flat with a few grey levels; noise has no spatial
correlation; a photo is colourful; an X-ray, CT or drawing has no speckle) and a logistic
model over them, fitted on real scans of the training sources against the non-ultrasound
corpus (``ml.training.gate``); beside it, any colour-Doppler flow pixel and a one-class
speckle distance (fitted on scans alone) withhold too. So its leave-one-source-out check
is cheap and independent of the task model's folds. Its parameters travel in
``model.json`` (``"gate"``); weights without them run without a gate.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

FEATURES: tuple[str, ...] = (
    "log_colour_fraction",  # chroma > 0.2
    "log_doppler_red_fraction",  # red/orange of a Doppler map
    "log_doppler_blue_fraction",  # blue/cyan of a Doppler map
    "log_colour_map_fraction",  # green/yellow/any strong hue over a large area
    "mean_chroma",
    "mean_grey",
    "std_grey",
    "black_fraction",
    "white_fraction",
    "histogram_entropy",
    "flat_fraction",
    "correlation_lag1",
    "correlation_lag4",
    "laplacian_ratio",
    "grey_levels",
    "centre_to_whole",
    "skewness",
    "log_kurtosis",
    "log_colour_blob_fraction",  # colour pixels whose 4 neighbours are colour too
    "log_central_colour_fraction",  # colour away from the frame's margins (UI lives there)
    "horizontal_line",  # longest thin horizontal ridge / width (a Doppler box's edge)
    "vertical_line",  # longest thin vertical ridge / height
    # Added for issue 16's targets (see the model card's ablation):
    "log_doppler_pixels",  # log(1 + n) pixels of a saturated Doppler red or blue, inside
    "box_corners",  # right-angled corners of thin lines (a Doppler / elastography box)
    "speckle_contrast",  # median local std/mean (5x5) where there is tissue
    "smooth_fraction",  # tissue pixels with local std/mean < 0.04: no speckle
    "residual_anisotropy",  # texture longer across than down (lateral resolution)
)


def _log_fraction(mask: np.ndarray) -> float:
    return float(np.log10(mask.mean() + 1e-4))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 1.0


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Per column, the longest run of True down the rows."""
    counts = np.cumsum(mask, axis=0, dtype=np.int32)
    reset = np.maximum.accumulate(np.where(mask, 0, counts), axis=0)
    return (counts - reset).max(axis=0)


def _line_features(grey: np.ndarray) -> tuple[float, float, float]:
    """Longest thin ridge along rows and along columns, as fractions of the frame (the
    outermost 6 pixels, the frame's own border, left out), and the box corners they make."""
    height, width = grey.shape
    if min(height, width) < 16:
        return 0.0, 0.0, 0.0
    across = np.abs(grey[1:-1] - (grey[:-2] + grey[2:]) / 2) > 0.03
    down = np.abs(grey[:, 1:-1] - (grey[:, :-2] + grey[:, 2:]) / 2) > 0.03
    horizontal = _longest_run(across.T)[6:-6].max(initial=0) / width
    vertical = _longest_run(down)[6:-6].max(initial=0) / height
    corners = _box_corners(across[5:-5, 6:-6], down[6:-6, 5:-5])
    return float(horizontal), float(vertical), corners


def _runs_to_end(mask: np.ndarray) -> np.ndarray:
    """Per element, the length of the run of True that starts there and goes down the rows."""
    flipped = mask[::-1]
    counts = np.cumsum(flipped, axis=0, dtype=np.int16)
    reset = np.maximum.accumulate(np.where(flipped, 0, counts), axis=0)
    return (counts - reset)[::-1]


def _max3(a: np.ndarray) -> np.ndarray:
    """3x3 maximum filter (edges padded with 0): a corner's two arms may miss by a pixel."""
    padded = np.pad(a, 1)
    rows = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _box_corners(across: np.ndarray, down: np.ndarray) -> float:
    """How box-like the frame's thin lines are: for each of the four corner orientations,
    the longest pair of perpendicular arms (horizontal ridge ``across``, vertical ridge
    ``down``) meeting at one pixel, as a fraction of the frame; the mean of the four. A
    colour-Doppler or elastography box is four such corners; tissue layers, calipers and
    text are not (Hough-free: run lengths by cumulative sums)."""
    size = min(across.shape)
    right = _max3(_runs_to_end(across.T).T)
    left = _max3(_runs_to_end(across.T[::-1])[::-1].T)
    below = _max3(_runs_to_end(down))
    above = _max3(_runs_to_end(down[::-1])[::-1])
    arms = [
        float(np.minimum(h, v).max(initial=0))
        for h in (right, left)
        for v in (below, above)
    ]
    return float(np.mean(arms)) / size


def _local_mean(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2 radius + 1)^2 window, edges reflected (summed-area table)."""
    k = 2 * radius + 1
    padded = np.pad(a, ((radius + 1, radius), (radius + 1, radius)), mode="reflect")
    table = padded.cumsum(axis=0).cumsum(axis=1)
    return (table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]) / (k * k)


def _speckle_features(grey: np.ndarray) -> tuple[float, float, float]:
    """Speckle statistics of B-mode: the local contrast (std/mean) of tissue is high and
    nowhere near zero (multiplicative speckle), unlike the additive noise on the flat
    regions of an X-ray, CT, MRI or drawing; and the fine texture is elongated across
    the beam (lateral resolution is worse than axial)."""
    if min(grey.shape) < 8:
        return 0.0, 1.0, 0.0
    mean = _local_mean(grey, 2)
    variance = np.maximum(_local_mean(grey * grey, 2) - mean * mean, 0.0)
    tissue = mean > 0.08
    contrast = np.sqrt(variance[tissue]) / mean[tissue]
    speckle = float(np.median(contrast)) if contrast.size else 0.0
    smooth = float((contrast < 0.04).mean()) if contrast.size else 1.0
    anisotropy = -1.0
    for scale in (
        1,
        2,
        3,
    ):  # the largest of three scales: a zoomed scan's speckle is coarser
        residual = grey - _local_mean(grey, scale)
        anisotropy = max(
            anisotropy,
            _correlation(residual[:, scale:], residual[:, :-scale])
            - _correlation(residual[scale:], residual[:-scale]),
        )
    return speckle, smooth, anisotropy


def _doppler_pixels(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> float:
    """log(1 + n), n the pixels away from the outer 5% (scanner marks live there) of a
    saturated red or blue: channel over twice, and 50 levels above, both others. A few
    are a Doppler flow spot; a tinted B-mode display or a cyan/yellow mark are not."""
    height, width = red.shape
    inside = (slice(height // 20, height - height // 20),
              slice(width // 20, width - width // 20))  # fmt: skip
    r, g, b = red[inside], green[inside], blue[inside]
    red_over, blue_over = np.maximum(g, b), np.maximum(r, g)
    doppler = ((r > 2 * red_over) & (r - red_over > 50) & (r > 90)) | (
        (b > 2 * blue_over) & (b - blue_over > 50) & (b > 90)
    )
    return float(np.log1p(np.count_nonzero(doppler)))


def gate_features(image: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) float64 statistics of an RGB uint8 image (the network's input,
    ``IMAGE_SIZE`` square; any size works but the gate was fitted at that size).

    Colour is counted at full size (a Doppler flow spot is a few pixels at 256); the grey
    statistics use the image halved (2x2 means), which is also where the time goes."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    # Channel planes and elementwise max/min: reductions over a last axis of 3 are slow.
    red, green, blue = (pixels[..., c].astype(np.int16) for c in range(3))
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(
        np.minimum(red, green), blue
    )
    doppler_red = (red - np.maximum(green, blue) > 51) & (red - blue > 76)
    doppler_blue = (blue - np.maximum(red, green) > 38) | (
        (blue - red > 76) & (green - red > 51)
    )
    height, width = (pixels.shape[0] // 2) * 2, (pixels.shape[1] // 2) * 2
    total = (red + green + blue)[:height, :width].astype(np.float32)
    grey = (
        total[0::2, 0::2] + total[1::2, 0::2] + total[0::2, 1::2] + total[1::2, 1::2]
    ) / (4 * 3 * 255.0)
    colour = chroma > 51
    blob = colour.copy()
    blob[1:-1, 1:-1] &= (
        colour[:-2, 1:-1] & colour[2:, 1:-1] & colour[1:-1, :-2] & colour[1:-1, 2:]
    )
    blob[[0, -1], :] = False
    blob[:, [0, -1]] = False
    full_h, full_w = colour.shape
    central_colour = colour[
        full_h // 10 : full_h - full_h // 10, full_w // 10 : full_w - full_w // 10
    ]
    fine_grey = (red + green + blue).astype(np.float32) / (3 * 255.0)
    horizontal, vertical, corners = _line_features(fine_grey)
    speckle, smooth, anisotropy = _speckle_features(grey)
    h, w = grey.shape
    centre = grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    levels = np.bincount((grey * 255).astype(np.uint8).ravel(), minlength=256)
    histogram = levels.reshape(64, 4).sum(axis=1)
    p = histogram[histogram > 0] / histogram.sum()
    centre_levels = np.bincount((centre * 255).astype(np.uint8).ravel(), minlength=256)
    dx = np.abs(np.diff(grey, axis=1))
    laplacian = np.abs(
        4 * centre[1:-1, 1:-1]
        - centre[:-2, 1:-1]
        - centre[2:, 1:-1]
        - centre[1:-1, :-2]
        - centre[1:-1, 2:]
    )
    centred = centre - centre.mean()
    centre_std = float(centred.std())
    if centre_std > 1e-6:
        skewness = float((centred**3).mean() / centre_std**3)
        kurtosis = float((centred**4).mean() / centre_std**4)
    else:
        skewness, kurtosis = 0.0, 1.0
    features = np.array(
        [
            _log_fraction(colour),
            _log_fraction(doppler_red),
            _log_fraction(doppler_blue),
            _log_fraction(chroma > 89),
            float(chroma.mean()) / 255.0,
            float(grey.mean()),
            float(grey.std()),
            float((grey < 0.03).mean()),
            float((grey > 0.9).mean()),
            float(-(p * np.log(p)).sum() / math.log(64)),
            float((dx < 0.5 / 255).mean()),
            _correlation(centre[:, 1:], centre[:, :-1]),
            _correlation(centre[:, 4:], centre[:, :-4]),
            float(laplacian.mean() / (centre_std + 0.01)),
            float((centre_levels > 0).sum() / 256.0),
            float(centre.mean() / (grey.mean() + 0.01)),
            float(np.clip(skewness, -10, 10)),
            float(np.log10(np.clip(kurtosis, 1.0, 1e4))),
            _log_fraction(blob),
            _log_fraction(central_colour),
            horizontal,
            vertical,
            _doppler_pixels(red, green, blue),
            corners,
            speckle,
            smooth,
            anisotropy,
        ],
        np.float64,
    )
    # A frame too small for a statistic (empty centre) gets 0, not NaN.
    return np.nan_to_num(features, nan=0.0, posinf=1e3, neginf=-1e3)


def standardise(features: np.ndarray, mean, scale) -> np.ndarray:
    """Standardised features, clipped to +-8 so that one wild statistic cannot swamp the
    rest (it still says "not like a scan")."""
    x = np.atleast_2d(np.asarray(features, np.float64))
    return np.clip((x - np.asarray(mean)) / np.asarray(scale), -8.0, 8.0)


@dataclass(frozen=True)
class OneClass:
    """How far an image lies beyond the fitted scans on the speckle statistics, the
    direction that says "not ultrasound" only (too smooth, too little speckle contrast,
    too isotropic): the largest signed standardised distance. Fitted on scans alone, so a
    kind of image no negative showed is still withheld if it has no speckle."""

    features: tuple[str, ...]
    direction: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, np.float64))
        columns = [FEATURES.index(f) for f in self.features]
        z = (x[:, columns] - np.asarray(self.mean)) / np.asarray(self.scale)
        return (z * np.asarray(self.direction)).max(axis=1)

    def to_dict(self) -> dict:
        return {
            "features": list(self.features),
            "direction": list(self.direction),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OneClass:
        if not set(d["features"]) <= set(FEATURES):
            raise ValueError(f"unknown one-class features {d['features']}")
        sizes = {len(d[k]) for k in ("features", "direction", "mean", "scale")}
        if len(sizes) != 1:
            raise ValueError(f"one-class parameters differ in length: {sizes}")
        return cls(
            features=tuple(d["features"]),
            direction=tuple(float(v) for v in d["direction"]),
            mean=tuple(float(v) for v in d["mean"]),
            scale=tuple(float(v) for v in d["scale"]),
            threshold=float(d["threshold"]),
        )


@dataclass(frozen=True)
class GateModel:
    """A logistic model over standardised :func:`gate_features` and their squares (so an
    image far from a scan in any statistic, too smooth as well as too rough, can be told
    apart), its log-odds of "not a breast B-mode ultrasound" withheld above ``threshold``;
    and, where fitted, two more reasons to withhold: a :class:`OneClass` distance above its
    threshold, and colour-Doppler flow pixels (``log_doppler_pixels`` above
    ``doppler_limit``). :meth:`score` is the largest of the three margins; withheld above 0."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    quadratic: tuple[float, ...]
    intercept: float
    threshold: float
    features: tuple[str, ...] = FEATURES
    one_class: OneClass | None = None
    doppler_limit: float | None = None

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        z = standardise(features, self.mean, self.scale)
        return (
            z @ np.asarray(self.coef)
            + (z * z) @ np.asarray(self.quadratic)
            + self.intercept
        )

    def margins(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per reason, how far past its threshold (> 0: withheld for that reason)."""
        out = {"logistic": self.log_odds(features) - self.threshold}
        if self.one_class is not None:
            out["one_class"] = (
                self.one_class.distance(features) - self.one_class.threshold
            )
        if self.doppler_limit is not None:
            x = np.atleast_2d(np.asarray(features, np.float64))
            out["doppler_pixels"] = (
                x[:, FEATURES.index("log_doppler_pixels")] - self.doppler_limit
            )
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.max(np.stack(list(self.margins(features).values())), axis=0)

    @staticmethod
    def withheld(scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > 0

    @property
    def gate_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "gate-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        d = {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "quadratic": list(self.quadratic),
            "intercept": self.intercept,
            "threshold": self.threshold,
        }
        if self.one_class is not None:
            d["one_class"] = self.one_class.to_dict()
        if self.doppler_limit is not None:
            d["doppler_limit"] = self.doppler_limit
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> GateModel | None:
        """``None`` for weights saved without a gate, or with features this code does not
        compute (the gate must then be refitted: ``python -m ml fit-gate``)."""
        if not d:
            return None
        if tuple(d.get("features", ())) != FEATURES:
            return None
        sizes = {len(d[k]) for k in ("mean", "scale", "coef", "quadratic")}
        if sizes != {len(FEATURES)}:
            raise ValueError(
                f"gate parameters need {len(FEATURES)} values each, got {sizes}"
            )
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            scale=tuple(float(v) for v in d["scale"]),
            coef=tuple(float(v) for v in d["coef"]),
            quadratic=tuple(float(v) for v in d["quadratic"]),
            intercept=float(d["intercept"]),
            threshold=float(d["threshold"]),
            one_class=OneClass.from_dict(d["one_class"]) if "one_class" in d else None,
            doppler_limit=float(d["doppler_limit"]) if "doppler_limit" in d else None,
        )
