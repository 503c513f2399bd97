"""``python -m ml predict``: analyse files or folders and write JSON and PNGs per image."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            files.append(path)
    return files


def predict(
    paths: list[Path],
    out_dir: Path,
    *,
    weights: Path | None = None,
    batch_size: int = 8,
    calibration: Path | None = None,
) -> int:
    """Returns the number of files that failed; each failure is reported on stderr by name."""
    from ml.decode import DecodeError, decode_image
    from ml.inference import Analyzer

    site = None
    if calibration is not None:
        from ml.site_calibration import read_calibration

        site = read_calibration(calibration)  # a bad file fails before the model loads
    files = expand(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer.load(weights)
    failures = analysed = 0
    used_stems: set[str] = set()
    # Decode a batch at a time: a folder of thousands of scans never sits in memory at once.
    for start in range(0, len(files), batch_size):
        chunk = []
        for path in files[start : start + batch_size]:
            try:
                chunk.append((path, decode_image(path)))
            except DecodeError as exc:
                failures += 1
                print(f"error: {path}: {exc}", file=sys.stderr)
        if not chunk:
            continue
        results = analyzer.analyze([image for _, image in chunk])
        for (path, image), result in zip(chunk, results, strict=True):
            stem, n = path.stem, 1
            while stem in used_stems:  # same name in two folders
                n += 1
                stem = f"{path.stem}-{n}"
            used_stems.add(stem)
            payload = result.to_dict()
            if site is not None:
                payload.update(_calibrated(site, result.class_logits))
            (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
            if result.withheld:  # not a breast ultrasound: no outline is drawn
                print(f"{path}: withheld, not a breast ultrasound image")
                continue
            for name, png in result.render_artifacts(image.pixels).items():
                (out_dir / f"{stem}_{name}.png").write_bytes(png)
            print(f"{path}: {result.label} ({result.confidence:.2f})")
        analysed += len(chunk)
    logger.info("%d analysed, %d failed", analysed, failures)
    return failures


def _calibrated(site, logits) -> dict:
    """The site calibration's id, its probabilities and the operating point's verdict."""
    from ml.config import CLASSES

    probabilities = site.probabilities(logits[None])
    return {
        "calibration": site.calibration_id,
        "calibrated_probabilities": {
            name: float(probabilities[0, c]) for c, name in enumerate(CLASSES)
        },
        "suspicious": bool(site.suspicious(probabilities)[0]),
    }
