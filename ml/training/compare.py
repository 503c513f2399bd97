"""``python -m ml compare``: a fine-tuned candidate against its baseline, side by side.

Both models run through the same :class:`~ml.inference.Analyzer` the workers use on the
same images: the site's held-back test part (``site_split.json`` beside the candidate,
written by ``python -m ml finetune``; never trained or calibrated on) and the original
sources' test splits. Every measure comes with a paired bootstrap interval of the
difference (candidate minus baseline) that resamples patients, the same patients for both
models in each round.

The verdict rule (``RULE``) is fixed here, before any run, and written into the report
ahead of the figures. For each measure, with the difference signed so that positive is
better (ECE: baseline minus candidate) and [lo, hi] its 95 % interval:

- **better**: lo > 0 (an improvement, whatever the resample);
- **not worse**: lo >= -margin (any drop is within the margin);
- **worse**: lo < -margin (a drop beyond the margin cannot be excluded; with few
  patients this is also the answer when the evidence is too thin to say).

A measure that cannot be computed on a set (no malignant lesion for an AUC, no outline for
Dice) has no verdict ("n/a").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.training.evaluate import collect, summarise
from ml.training.sources import read_manifest, register_source

logger = logging.getLogger(__name__)

# measure: (direction, margin). direction +1: higher is better; -1: lower is better.
RULE: dict[str, tuple[int, float]] = {
    "auc_malignant_vs_benign": (+1, 0.01),
    "recall_normal": (+1, 0.02),
    "recall_benign": (+1, 0.02),
    "recall_malignant": (+1, 0.02),
    "dice_lesion_mean": (+1, 0.01),
    "ece": (-1, 0.01),
}
RULE_TEXT = (
    "difference d = (candidate - baseline) x direction, 95% paired bootstrap interval "
    "[lo, hi] resampling patients: better if lo > 0; not worse if lo >= -margin; "
    "worse if lo < -margin; n/a if not computable"
)


def verdict(interval: tuple[float, float] | None, margin: float) -> str:
    if interval is None or np.isnan(interval[0]):
        return "n/a"
    if interval[0] > 0:
        return "better"
    if interval[0] >= -margin:
        return "not worse"
    return "worse"


def compare_results(
    baseline: dict, candidate: dict, *, rounds: int, seed: int = 0
) -> dict:
    """Measures of both, and the paired differences with their intervals and verdicts."""
    base_point, cand_point = summarise(baseline), summarise(candidate)

    def differences(indices: np.ndarray) -> dict[str, float]:
        b, c = summarise(baseline, indices), summarise(candidate, indices)
        return {m: (c[m] - b[m]) * direction for m, (direction, _) in RULE.items()}

    intervals = metrics.bootstrap_intervals(
        differences, baseline["groups"], rounds=rounds, seed=seed
    )
    measures = {}
    for name, (direction, margin) in RULE.items():
        difference = (cand_point[name] - base_point[name]) * direction
        interval = intervals.get(name)
        if np.isnan(difference):
            interval = None
        measures[name] = {
            "baseline": base_point[name],
            "candidate": cand_point[name],
            "difference": difference,
            "ci95": interval,
            "margin": margin,
            "verdict": verdict(interval, margin),
        }
    return {
        "n": len(baseline["labels"]),
        "patients": len(np.unique(baseline["groups"])),
        "measures": measures,
    }


def _paired(a: dict, b: dict) -> None:
    if not np.array_equal(a["labels"], b["labels"]) or not np.array_equal(
        a["groups"], b["groups"]
    ):
        raise RuntimeError("baseline and candidate were not run on the same images")


def compare(
    baseline: Path,
    candidate: Path,
    site_sources: list[Path],
    out: Path | None = None,
    *,
    split_file: Path | None = None,
    original_sources: list[str] | None = None,
    original_limit: int | None = None,
    rounds: int = 1000,
    batch_size: int = 8,
) -> dict:
    from ml.inference import Analyzer
    from ml.training.finetune import SITE_SPLIT_FILE, source_sha256
    from ml.training.splits import load_split

    out = out or Path(candidate) / "compare_report.json"
    split_file = split_file or Path(candidate) / SITE_SPLIT_FILE
    if not split_file.is_file():
        raise FileNotFoundError(
            f"no site split at {split_file}: the candidate's held-back images are named "
            "there (python -m ml finetune writes it)"
        )
    splits = json.loads(split_file.read_text())
    base_model, cand_model = Analyzer.load(baseline), Analyzer.load(candidate)
    originals = original_sources
    if originals is None:
        originals = list(cand_model.meta.training.get("sources", []))
    report = {
        "rule": {"text": RULE_TEXT, "measures": RULE},
        "baseline": base_model.model_version,
        "candidate": cand_model.model_version,
        "rounds": rounds,
        "sets": {},
    }
    # The rule is on disk before any figure exists.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")

    sets: list[tuple[str, str, list[str]]] = []
    for root in site_sources:
        name = register_source(Path(root))
        if name not in splits:
            raise KeyError(f"{split_file} has no split of {name}")
        if splits[name]["source_sha256"] != source_sha256(Path(root)):
            raise ValueError(
                f"{root} is not the export the candidate was split on (its sha256 differs)"
            )
        records = {r.path for r in read_manifest(name)}
        missing = [p for p in splits[name]["test"] if p not in records]
        if missing:
            raise KeyError(f"held-back images missing from {root}: {missing[:3]}")
        sets.append((f"site:{name}", name, splits[name]["test"]))
    for source in originals:
        paths = load_split(source)["test"]
        if original_limit:
            paths = paths[:: max(1, len(paths) // original_limit)][:original_limit]
        sets.append((f"original:{source}", source, paths))

    for label, source, paths in sets:
        logger.info("comparing on %s (%d images)", label, len(paths))
        base = collect(base_model, source, paths, batch_size)
        cand = collect(cand_model, source, paths, batch_size)
        _paired(base, cand)
        report["sets"][label] = compare_results(base, cand, rounds=rounds)
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    report["markdown"] = markdown(report)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    out.with_suffix(".md").write_text(report["markdown"])
    return report


def _figure(value: float | None) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.3f}"


def markdown(report: dict) -> str:
    lines = [
        f"# {report['candidate']} against {report['baseline']}",
        "",
        f"Rule (fixed before the run): {report['rule']['text']}. Margins: "
        + ", ".join(f"{m} {margin}" for m, (_, margin) in RULE.items())
        + f". {report['rounds']} bootstrap rounds.",
        "",
        "| set | measure | baseline | candidate | difference (95% CI) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in report["sets"].items():
        for name, m in result["measures"].items():
            ci = m["ci95"]
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            lines.append(
                f"| {label} (n={result['n']}, {result['patients']} patients) | {name} | "
                f"{_figure(m['baseline'])} | {_figure(m['candidate'])} | "
                f"{_figure(m['difference'])}{interval} | {m['verdict']} |"
            )
    return "\n".join(lines) + "\n"
