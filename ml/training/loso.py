"""``python -m ml loso``: leave one source out — train on two hospitals, test on the whole third.

The honest estimate of how the model does at a hospital it has never seen, computed from the
data the project has. Each fold trains with the production recipe on a shorter schedule
(see ``--epochs``), selects its epoch and fits its calibration and out-of-distribution
statistics on the two training sources' validation splits, and is scored on every used
image of the held-out source. A fold whose weights exist is reused with ``--resume``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ml.config import IMAGE_SIZE
from ml.training.evaluate import collect, with_intervals
from ml.training.sources import SOURCES
from ml.training.splits import SPLITS, load_split
from ml.training.train import TrainConfig, train

logger = logging.getLogger(__name__)


def held_out_paths(source: str) -> list[str]:
    split = load_split(source)
    return sorted(path for part in SPLITS for path in split[part])


def leave_one_source_out(
    work_dir: Path,
    report_path: Path,
    *,
    epochs: int = 12,
    frozen_epochs: int = 1,
    augment: bool = True,
    image_size: int = IMAGE_SIZE,
    class_head: str = "global",
    held_out: tuple[str, ...] = tuple(SOURCES),
    rounds: int = 1000,
    resume: bool = False,
) -> dict:
    from ml.inference import Analyzer

    report = (
        json.loads(report_path.read_text()) if resume and report_path.is_file() else {}
    )
    report.setdefault("folds", {})
    report["schedule"] = {
        "epochs": epochs,
        "frozen_epochs": frozen_epochs,
        "augment": augment,
        "image_size": image_size,
        "class_head": class_head,
    }
    for source in held_out:
        fold_dir = work_dir / f"without-{source}"
        training_sources = tuple(s for s in SOURCES if s != source)
        if not (resume and (fold_dir / "model.json").is_file()):
            logger.info("LOSO fold: train on %s, test on %s", training_sources, source)
            train(
                TrainConfig(
                    out_dir=fold_dir,
                    sources=training_sources,
                    epochs=epochs,
                    frozen_epochs=frozen_epochs,
                    patience=epochs,
                    augment=augment,
                    image_size=image_size,
                    class_head=class_head,
                    extra={"loso_held_out": source},
                )
            )
        analyzer = Analyzer.load(fold_dir)
        results = collect(analyzer, source, held_out_paths(source))
        report["folds"][source] = {
            "trained_on": list(training_sources),
            "model_version": analyzer.model_version,
            "best_epoch": analyzer.meta.training.get("best_epoch"),
            "images": len(results["labels"]),
            "metrics": with_intervals(results, rounds),
        }
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        logger.info(
            "LOSO %s: %s", source, json.dumps(report["folds"][source]["metrics"])
        )
    return report
