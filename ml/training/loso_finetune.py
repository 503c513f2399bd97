"""``python -m ml loso-finetune``: what fine-tuning on a new hospital's own scans buys.

Issue 17's figure. Each LOSO fold model (``<loso>/without-<source>/``, trained without the
held-out source) plays the shipped model at a hospital it has never seen; the held-out
source plays that hospital. For each k, the fold model is fine-tuned with the product's own
recipe (:func:`ml.training.finetune.finetune`, default schedule and time budget) on about k
of the source's images, drawn by whole patient, and :func:`ml.training.compare.compare`
then judges fold model against fine-tuned model on **every other image of that source**
and on the fold's original sources' test splits, with the verdict rule fixed in
``ml.training.compare`` before any run.

The held-out source is read in place as a site source (``shared/data/<source>/`` is the
format ``export_training_set`` writes). BUSI names no patients, so there each image is its
own patient here: BUSI's few near-duplicate pairs can fall on both sides of the draw.

Each (fold, k) leaves ``<loso>/without-<source>/finetune-<k>/`` with the weights, the site
split, the fine-tuning summary and ``compare_report.{json,md}``; the rows are merged into
``ml/reports/loso_finetune.json`` as they finish, so a run can be resumed fold by fold.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ml.training.sources import get_source

logger = logging.getLogger(__name__)

DEFAULT_KS = (100, 200)
MEASURES = ("auc_malignant_vs_benign", "dice_lesion_mean", "ece")


def _row(compare_report: dict, summary: dict) -> dict:
    sets = {}
    for label, result in compare_report["sets"].items():
        sets[label] = {
            "n": result["n"],
            "patients": result["patients"],
            **{
                name: {
                    key: result["measures"][name][key]
                    for key in (
                        "baseline",
                        "candidate",
                        "difference",
                        "ci95",
                        "verdict",
                    )
                }
                for name in result["measures"]
            },
        }
    site = summary["site_sources"][0]
    return {
        "baseline": compare_report["baseline"],
        "candidate": compare_report["candidate"],
        "site_split": site["split"],
        "site_split_patients": site["split_patients"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        # Absent from the first recipe's rows (it had neither guard).
        "freeze_batchnorm": summary.get("freeze_batchnorm", False),
        "blend": summary.get("blend", 1.0),
        "anchor_strength": summary.get("anchor_strength", 0.0),
        "blend_rule": summary.get("blend_rule"),
        "seconds": summary["seconds"],
        "sets": sets,
    }


def loso_finetune(
    loso_dir: Path,
    report_path: Path,
    *,
    folds: tuple[str, ...],
    ks: tuple[int, ...] = DEFAULT_KS,
    rounds: int = 1000,
    resume: bool = True,
    tag: str = "",
    recipe: dict | None = None,
) -> dict:
    """``tag`` names an ablation (its runs and rows apart from the shipped recipe's);
    ``recipe``: FinetuneConfig fields that make it (the product's defaults otherwise)."""
    from ml.training.compare import compare
    from ml.training.finetune import FinetuneConfig, finetune

    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.setdefault("folds", {})
    for source in folds:
        fold_dir = Path(loso_dir) / f"without-{source}"
        if not (fold_dir / "model.json").is_file():
            raise FileNotFoundError(
                f"no fold model in {fold_dir}: run python -m ml loso --fold {source} first"
            )
        site_root = get_source(source).root()
        for k in ks:
            key = f"{k}-{tag}" if tag else str(k)
            out = fold_dir / f"finetune-{key}"
            summary_file = out / "finetune_summary.json"
            if resume and summary_file.is_file():
                summary = json.loads(summary_file.read_text())
            else:
                logger.info(
                    "fold without %s: fine-tuning on %d of its images", source, k
                )
                summary = finetune(
                    FinetuneConfig(
                        base=fold_dir,
                        site_sources=(site_root,),
                        out_dir=out,
                        site_images=k,
                        **(recipe or {}),
                    )
                )
            compared = out / "compare_report.json"
            if (
                resume
                and compared.is_file()
                and "markdown" in (existing := json.loads(compared.read_text()))
            ):
                result = existing
            else:
                result = compare(fold_dir, out, [site_root], compared, rounds=rounds)
            report["folds"].setdefault(source, {})[key] = _row(result, summary)
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


def lines(report: dict) -> list[str]:
    """One line per (fold, k, set): the measures before -> after with their verdicts."""
    out = []
    for source, by_k in report["folds"].items():
        for k, row in by_k.items():
            for label, figures in row["sets"].items():
                parts = [
                    f"{name} {figures[name]['baseline']:.3f} -> "
                    f"{figures[name]['candidate']:.3f} ({figures[name]['verdict']})"
                    for name in MEASURES
                    if name in figures and figures[name]["baseline"] is not None
                ]
                out.append(
                    f"without {source}, k={k}, {label} (n={figures['n']}): "
                    + ", ".join(parts)
                )
    return out
