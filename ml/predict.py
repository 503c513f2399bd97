"""``python -m ml predict``: analyse files or folders and write JSON and PNGs per image.

By default each image gets what a worker stores: ``<stem>.json``, ``<stem>_mask.png`` (1-bit,
at the image's size) and the two heatmaps as 8-bit grey PNGs at the network's resolution
(``<stem>_gradcam_map.png``, ``<stem>_seg_gradcam_map.png``). ``--overlays`` also draws the
full-resolution composites (outline and both heatmap overlays); ``--calibration`` adds a site
calibration's probabilities and ``suspicious`` verdict to the JSON. An image the gate withholds
(not a breast ultrasound) gets its JSON only. Files are decoded ahead and
drawn, encoded and written on a separate thread, so the network's thread only runs the network.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
OVERLAYS = ("overlay", "gradcam", "seg_gradcam")


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


def _decode_batch(paths: list[Path]) -> list[tuple[Path, object]]:
    """(path, DecodedImage) or (path, DecodeError) for each path."""
    from ml.decode import DecodeError, decode_image

    decoded: list[tuple[Path, object]] = []
    for path in paths:
        try:
            decoded.append((path, decode_image(path)))
        except DecodeError as exc:
            decoded.append((path, exc))
    return decoded


def _write_outputs(
    out_dir: Path, stem: str, result, payload: dict, image, overlays: bool
) -> None:
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if result.withheld:  # not a breast ultrasound: no outline or heatmap is written
        return
    for name, png in result.stored_artifacts().items():
        (out_dir / f"{stem}_{name}.png").write_bytes(png)
    if overlays:
        drawn = result.render_artifacts(image.pixels)
        for name in OVERLAYS:
            (out_dir / f"{stem}_{name}.png").write_bytes(drawn[name])


def predict(
    paths: list[Path],
    out_dir: Path,
    *,
    weights: Path | None = None,
    batch_size: int = 8,
    overlays: bool = False,
    calibration: Path | None = None,
) -> int:
    """Returns the number of files that failed; each failure is reported on stderr by name."""
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
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    started = time.perf_counter()
    # One thread decodes the next batch while the network runs; another draws, encodes
    # and writes. A batch at a time: a folder of thousands never sits in memory at once.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="decode") as decoder,
        ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
    ):
        pending: list[Future] = []
        first: tuple[float, float, int] | None = None
        upcoming = decoder.submit(_decode_batch, batches[0]) if batches else None
        for n in range(len(batches)):
            decoded = upcoming.result()
            if n + 1 < len(batches):
                upcoming = decoder.submit(_decode_batch, batches[n + 1])
            chunk = []
            for path, image in decoded:
                if isinstance(image, Exception):
                    failures += 1
                    print(f"error: {path}: {image}", file=sys.stderr)
                else:
                    chunk.append((path, image))
            if not chunk:
                continue
            results = analyzer.analyze([image for _, image in chunk])
            for (path, image), result in zip(chunk, results, strict=True):
                stem, k = path.stem, 1
                while stem in used_stems:  # same name in two folders
                    k += 1
                    stem = f"{path.stem}-{k}"
                used_stems.add(stem)
                payload = result.to_dict()
                if site is not None:
                    payload.update(_calibrated(site, result.class_logits))
                pending.append(
                    writer.submit(
                        _write_outputs, out_dir, stem, result, payload, image, overlays
                    )
                )
                if result.withheld:  # not a breast ultrasound: no outline is drawn
                    print(f"{path}: withheld, not a breast ultrasound image")
                else:
                    print(f"{path}: {result.label} ({result.confidence:.2f})")
            analysed += len(chunk)
            if first is None:  # the first batch also traces the network for its size
                first = (time.perf_counter(), time.process_time(), analysed + failures)
            done = [future for future in pending if future.done()]
            for future in done:
                future.result()  # a failed write stops the run here
            pending = [future for future in pending if future not in done]
            while len(pending) > 4 * batch_size:  # writing fell behind: wait for it
                pending.pop(0).result()
        for future in pending:
            future.result()
    ended = time.perf_counter()
    logger.info(
        "%d analysed, %d failed in %.1fs after loading the model",
        analysed,
        failures,
        ended - started,
    )
    if first is not None and analysed + failures > first[2]:
        count = analysed + failures - first[2]
        logger.info(
            "marginal time: %.1f ms per image, %.1f ms CPU (all threads) per image "
            "(the %d images after the first batch)",
            1000 * (ended - first[0]) / count,
            1000 * (time.process_time() - first[1]) / count,
            count,
        )
    return failures


def _calibrated(site, logits) -> dict:
    """The site calibration's id, its probabilities, label and the operating point's
    verdict."""
    from ml.config import CLASSES

    probabilities = site.probabilities(logits[None])
    return {
        "calibration": site.calibration_id,
        "calibrated_label": CLASSES[int(site.labels(logits[None])[0])],
        "calibrated_probabilities": {
            name: float(probabilities[0, c]) for c, name in enumerate(CLASSES)
        },
        "suspicious": bool(site.suspicious(probabilities)[0]),
    }
