"""``python -m bench ml``: per-image time of the full analysis, against the earlier prototype.

Full analysis = decode the file, preprocess, classify, segment, both heatmaps, the
out-of-distribution gate, encode what a worker stores (the 1-bit mask and two small grey heatmap PNGs; pictures are drawn where
they are shown, not here). The machine's load average is printed before and after: a figure
measured while other work shares the cores says so. The prototype configuration is EfficientNetB7 at 600x600, classification
only, with random weights (timing does not depend on the values).
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _sample_files(data_dir: Path, count: int) -> tuple[list[bytes], str]:
    manifest = data_dir / "MANIFEST.csv"
    if manifest.is_file():
        from ml.training.sources import read_manifest

        records = read_manifest("busi", data_dir)
        step = max(1, len(records) // count)
        return [
            (data_dir / r.path).read_bytes() for r in records[::step][:count]
        ], f"BUSI images from {data_dir}"
    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (474, 564), np.uint8)).save(
            buffer, format="PNG"
        )
        files.append(buffer.getvalue())
    return files, "synthetic 564x474 noise images (dataset not found)"


def time_full_analysis(
    analyzer,
    files: list[bytes],
    batch_size: int,
    repeats: int,
    stages: dict[str, list[float]] | None = None,
) -> list[float]:
    """Per-image seconds of each batch; ``stages`` collects decode / model / encode shares."""
    from ml.decode import decode_image

    per_image = []
    for _ in range(repeats):
        for start in range(0, len(files) - batch_size + 1, batch_size):
            began = time.perf_counter()
            images = [decode_image(data) for data in files[start : start + batch_size]]
            decoded = time.perf_counter()
            results = analyzer.analyze(images, batch_size=batch_size)
            analysed = time.perf_counter()
            for result in results:
                result.stored_artifacts()
            encoded = time.perf_counter()
            per_image.append((encoded - began) / batch_size)
            if stages is not None:
                for name, seconds in (
                    ("decode", decoded - began),
                    ("model", analysed - decoded),
                    ("encode", encoded - analysed),
                ):
                    stages.setdefault(name, []).append(seconds / batch_size)
    return per_image


def time_gate(
    analyzer, files: list[bytes], batch_size: int, repeats: int
) -> tuple[float, float] | None:
    """The ultrasound gate alone (features + score, as ``Analyzer.analyze`` runs it on the
    network-size images; also inside the "model" stage): median per-image wall and CPU
    seconds. CPU time is what the gate costs whatever else shares the machine."""
    from ml.decode import decode_image
    from ml.gate import gate_features

    if analyzer.gate is None:
        return None
    size = analyzer.image_size
    batches = [
        np.stack(
            [
                np.asarray(
                    Image.fromarray(decode_image(data).pixels).resize(
                        (size, size), Image.BILINEAR
                    )
                )
                for data in files[start : start + batch_size]
            ]
        )
        for start in range(0, len(files) - batch_size + 1, batch_size)
    ]
    wall, cpu = [], []
    for _ in range(repeats):
        for batch in batches:
            began, began_cpu = time.perf_counter(), time.process_time()
            analyzer.gate.withheld(
                analyzer.gate.score(np.stack([gate_features(b) for b in batch]))
            )
            wall.append((time.perf_counter() - began) / batch_size)
            cpu.append((time.process_time() - began_cpu) / batch_size)
    return statistics.median(wall), statistics.median(cpu)


def time_prototype(batch_size: int, repeats: int) -> list[float]:
    import keras

    model = keras.applications.EfficientNetB7(
        weights=None, input_shape=(600, 600, 3), classes=3
    )
    batch = (
        np.random.default_rng(0)
        .uniform(0, 255, (batch_size, 600, 600, 3))
        .astype(np.float32)
    )
    model.predict_on_batch(batch)  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        model.predict_on_batch(batch)
        times.append((time.perf_counter() - began) / batch_size)
    return times


def run(
    data_dir: Path,
    weights: Path | None,
    *,
    images: int = 32,
    repeats: int = 2,
    prototype_repeats: int = 3,
) -> dict:
    import os

    import tensorflow as tf

    from ml.inference import Analyzer

    files, source = _sample_files(data_dir, images)
    load_before = os.getloadavg()[0]
    analyzer = Analyzer.load(weights)
    time_full_analysis(analyzer, files[:8], 8, 1)  # warm-up: traces batch 8
    time_full_analysis(analyzer, files[:1], 1, 1)
    batch1 = statistics.median(time_full_analysis(analyzer, files, 1, repeats))
    stages: dict[str, list[float]] = {}
    batch8 = statistics.median(time_full_analysis(analyzer, files, 8, repeats, stages))
    gate = time_gate(analyzer, files, 8, repeats)
    prototype = statistics.median(time_prototype(1, prototype_repeats))
    report = {
        "model_version": analyzer.model_version,
        "second_look": "off"
        if analyzer.second_look is None
        else f"margin {analyzer.second_look}",
        "images": f"{len(files)} {source}",
        "cpu_count": os.cpu_count(),
        "load_average_1min_before_after": (
            f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
        ),
        "gpu": bool(tf.config.list_physical_devices("GPU")),
        "full_analysis_batch1_ms": round(batch1 * 1000, 1),
        "full_analysis_batch8_ms_per_image": round(batch8 * 1000, 1),
        **{
            f"  of which {name}_ms": round(statistics.median(values) * 1000, 1)
            for name, values in stages.items()
        },
        **(
            {
                "  gate alone (inside model), wall_ms": round(gate[0] * 1000, 1),
                "  gate alone (inside model), cpu_ms": round(gate[1] * 1000, 1),
            }
            if gate is not None
            else {}
        ),
        "prototype_b7_600_classification_batch1_ms": round(prototype * 1000, 1),
        "speedup_vs_prototype_batch8": round(prototype / batch8, 1),
    }
    return report
