"""Writes ``ml/MODEL_CARD.md`` from the reports; every figure in it comes from a report file.

Inputs, all under ``ml/reports/``: ``metrics.json`` (``python -m ml evaluate``), ``loso.json``
(``python -m ml loso``), optionally ``ablation.json`` (LOSO reports of other recipes) and
``notes.md`` (what a person observed about the run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ml.config import CLASSES, PACKAGE_DIR
from ml.ood import FEATURE_STRIDES
from ml.training.sources import SOURCES

LABELS = {
    "n": "images",
    "recall_normal": "Recall, normal",
    "recall_benign": "Recall, benign",
    "recall_malignant": "Recall, malignant",
    "auc_malignant_vs_benign": "ROC AUC, malignant vs benign",
    "auc_malignant_vs_rest": "ROC AUC, malignant vs rest",
    "dice_lesion_mean": "Dice, lesion images (mean)",
    "normal_with_lesion_over_1pct": "Normal images with a predicted lesion > 1%",
    "ece": "Expected calibration error (10 bins)",
    "in_distribution_rate": "Judged in distribution",
}
LOSO_COLUMNS = (
    "n",
    "auc_malignant_vs_benign",
    "recall_normal",
    "recall_benign",
    "recall_malignant",
    "dice_lesion_mean",
    "normal_with_lesion_over_1pct",
    "ece",
)


def _report(report_dir: Path, name: str) -> dict | None:
    """A report file's contents; None when it was not written (its section is left
    out, or says so)."""
    path = report_dir / name
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header: tuple[str, ...], align: str, rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; `align` has a letter a column: "l" text, "r" numbers."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join([_cells(header), rule, *(_cells(row) for row in rows)])


def _cells(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _figure(entry: dict | None) -> str:
    if not entry:
        return "—"
    value, interval = entry["value"], entry.get("ci95")
    if value is None or math.isnan(value):  # the class is absent from that set
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if not interval or math.isnan(interval[0]):
        return f"{value:.3f}"
    return f"{value:.3f} ({interval[0]:.2f}–{interval[1]:.2f})"


def _metrics_table(columns: dict[str, dict], keys: tuple[str, ...]) -> str:
    header = "| measure | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [
        f"| {LABELS[key]} | "
        + " | ".join(_figure(m.get(key)) for m in columns.values())
        + " |"
        for key in keys
    ]
    return "\n".join([header, rule, *rows])


def schedule_text(schedule: dict | None) -> str:
    """A fold's training schedule in a few words (``loso.json`` rows record it)."""
    if not schedule:
        return "not recorded"
    epochs = schedule["epochs"]
    parts = [f"{epochs} epochs, {schedule.get('frozen_epochs', '?')} frozen"]
    patience = schedule.get("patience")
    if patience is not None and patience < epochs:
        parts.append(f"patience {patience}")
    if schedule.get("image_size", 256) != 256:
        parts.append(f"{schedule['image_size']} px")
    if schedule.get("class_head", "global") != "global":
        parts.append(f"{schedule['class_head']} head")
    if schedule.get("backbone", "lite0") != "lite0":
        parts.append(f"EfficientNet-{schedule['backbone'].capitalize()}")
    if not schedule.get("augment", True):
        parts.append("no augmentation")
    if schedule.get("second_look") is not None:
        parts.append(f"second look {schedule['second_look']}")
    if schedule.get("average_from") is not None:
        parts.append(f"weights averaged from epoch {schedule['average_from']}")
    return "; ".join(parts)


def _loso_table(report: dict) -> str:
    header = (
        "| held-out source (trained on the other two) | schedule | "
        + " | ".join(LABELS[c] for c in LOSO_COLUMNS)
        + " |"
    )
    rule = "|---|---|" + "---:|" * len(LOSO_COLUMNS)
    rows = [
        f"| {source} | {schedule_text(fold.get('schedule', report.get('schedule')))} | "
        + " | ".join(_figure(fold["metrics"].get(c)) for c in LOSO_COLUMNS)
        + " |"
        for source, fold in report["folds"].items()
    ]
    return "\n".join([header, rule, *rows])


def _ablation_section(report_dir: Path, loso: dict | None) -> str:
    rows = []
    if loso:
        rows.append(("production recipe (all of the below)", loso))
    rows += list((_report(report_dir, "ablation.json") or {}).items())
    averaged = _report(report_dir, "weight_average.json")
    if averaged:
        name = (
            f"weights averaged from epoch {_average_from(averaged)} (SWA; the same "
            "runs' best epochs in the weight-averaging section)"
        )
        rows.append((name, averaged))
    lite2 = _report(report_dir, "backbone_lite2.json")
    if lite2:
        rows.append(("EfficientNet-Lite2 encoder, 256 px (its own section)", lite2))
    if len(rows) < 2:
        return (
            "Only the production recipe was measured by LOSO for these weights; no ablation "
            "row was run (each costs three trainings; see Limits)."
        )
    lines = [
        "| recipe | held out | AUC m-vs-b | Dice | ECE |",
        "|---|---|---:|---:|---:|",
    ]
    others = []
    for name, report in rows:
        for source, fold in report.get("folds", {}).items():
            m = fold["metrics"]
            lines.append(
                f"| {name} | {source} | {_figure(m.get('auc_malignant_vs_benign'))} | "
                f"{_figure(m.get('dice_lesion_mean'))} | {_figure(m.get('ece'))} |"
            )
        if report.get("result"):  # a row judged otherwise than by LOSO folds (so far)
            command = f" (`{report['command']}`)" if report.get("command") else ""
            if report.get("command_loso"):
                command += f" (LOSO: `{report['command_loso']}`)"
            others.append(f"- **{name}**: {report['result']}{command}")
    return "\n".join(lines + ([""] + others if others else []))


TARGETS = (
    ("held_out_scans_passing", 0.99, "held-out scans passing"),
    ("doppler_withheld", 0.90, "Doppler frames withheld"),
    ("corpus_withheld_kind_held_out", 0.95, "corpus withheld"),
)


def _gate_rows(variants: list[dict], prefix: str = "") -> list[str]:
    return [
        f"| {prefix}{variant['name']} | {source} | "
        f"{_rate(fold.get('held_out_scans_passing'))} | "
        f"{_rate(fold.get('doppler_withheld'))} | "
        f"{_rate(fold.get('all_doppler_withheld'))} | "
        f"{_rate(fold.get('corpus_withheld_kind_held_out'))} |"
        for variant in variants
        for source, fold in variant["folds"].items()
    ]


def _gate_verdict(chosen: dict) -> str:
    """Which issue-16 targets the shipped gate meets, computed from its folds."""
    missed = [
        f"{label} when {source} is held out ({fold[key]:.3f} < {target:.2f})"
        for key, target, label in TARGETS
        for source, fold in chosen["folds"].items()
        if fold.get(key) is not None and fold[key] < target
    ]
    if not missed:
        return "The shipped gate meets all three targets in every fold."
    return "The shipped gate misses: " + "; ".join(missed) + "."


def _gate_section(report_dir: Path) -> str:
    """From ``gate.json`` (``python -m ml fit-gate``) and, as ablation rows, the previous
    gate's own report ``gate_previous.json``; empty without the first."""
    gate = _report(report_dir, "gate.json")
    if gate is None:
        return ""
    rows = [
        (
            "| gate | held out | held-out scans passing | Doppler frames withheld | "
            "all Doppler frames withheld | corpus withheld (kind held out) |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    previous = _report(report_dir, "gate_previous.json")
    previous_note = ""
    if previous is not None:
        gate_id = previous["production"]["gate_id"]
        rows += _gate_rows(
            [v for v in previous["variants"] if not v["name"].startswith("before:")],
            prefix=f"previous gate `{gate_id}` run: ",
        )
        previous_note = (
            f"Rows marked `{gate_id}` are the previous gate's own run "
            f"(`gate_previous.json`: {previous['corpus_kinds']} corpus kinds, no speckle "
            "statistics, no Doppler-pixel or one-class term), kept as ablations.\n\n"
        )
    rows += _gate_rows(gate["variants"])
    chosen = gate["variants"][-1]
    kinds = sorted(next(iter(chosen["folds"].values()))["corpus_withheld_per_kind"])
    per_kind = "\n".join(
        f"| {kind} | "
        + " | ".join(
            _rate(fold["corpus_withheld_per_kind"][kind])
            for fold in chosen["folds"].values()
        )
        + " |"
        for kind in kinds
    )
    header = " | ".join(f"without {s}" for s in chosen["folds"])
    production = gate["production"]
    marked = gate.get("unmarked_doppler_frames", {})
    unmarked = ", ".join(f"{s} {len(p)}" for s, p in marked.items()) or "none"
    all_doppler = next(iter(chosen["folds"].values())).get("all_doppler_frames", "–")
    by_part = ", ".join(
        f"{part} {_rate(rate)}"
        for part, rate in production.get("training_scans_withheld_by", {}).items()
    )
    return f"""
## Not a breast ultrasound: the gate (analysis withheld)
{gate["description"]}

Judged leave one source out: fitted on two sources' scans, tested on the third's; every
corpus kind ({gate["corpus_images"]} images, {gate["corpus_kinds"]} kinds) withheld-tested by a
gate fitted without that kind (the painted overlays go with their kind); BUS-UCLM's
{gate["doppler_frames"]} real colour-Doppler frames are never fitted on. Colour-Doppler frames
that a manifest does not mark ({unmarked}; `UNMARKED_DOPPLER` in `ml/training/gate.py`, seen
by eye) are not counted as scans nor fitted on; "all Doppler frames" counts them with the
{gate["doppler_frames"]} ({all_doppler} in all). No threshold is computed from test data: the logistic one is the 99.8th
percentile of the fold's fitted scans, the one-class one the farthest fitted scan (that
keep, 1.0, was picked over 0.998 after both were judged here: both rows are below), the
Doppler-pixel limit is "any pixel". Targets: held-out scans
passing >= 0.99, corpus >= 0.95, Doppler >= 0.90. {_gate_verdict(chosen)}

{previous_note}{chr(10).join(rows)}

Corpus withheld per kind, the kind held out (last gate above):

| kind | {header} |
|---|{"---:|" * len(chosen["folds"])}
{per_kind}

Shipped gate `{production["gate_id"]}` (all three sources, every kind; in `model.json`):
threshold {production["threshold"]:.3f} on the log-odds, one-class threshold
{production.get("one_class_threshold", float("nan")):.3f}, Doppler-pixel limit
{production.get("doppler_limit")}; training scans withheld
{_rate(production["training_scans_withheld"])} ({by_part}).
"""


def _rate(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _caution_section(report_dir: Path) -> str:
    caution = _report(report_dir, "caution.json")
    if caution is None:
        return ""
    rows = "\n".join(
        f"| {row['model']} | {row['source']} | {row['n']} | {_rate(row['passing_before'])} | "
        f"{_rate(row['passing_after'])} | {row['note']} |"
        for row in caution["rows"]
    )
    return f"""
## Unusual for this model: the caution
{caution["description"]}

| model | source | images | passing, old threshold | passing, new threshold | |
|---|---|---:|---:|---:|---|
{rows}
"""


SITE_CURVE_MEASURES = (
    "ece",
    "ece_floor",
    "recall_normal",
    "recall_benign",
    "recall_malignant",
    "sensitivity",
)


PAIRED = {
    "paired_with_prior_fixed": "the shipped fit minus the same fit with the prior's "
    "strength fixed",
    "paired_without_prior": "the shipped fit minus the same fit without the prior",
    "paired_with_version_1": "the shipped fit minus v1",
}


def _paired_lines(curve: dict) -> str:
    """The shipped fit minus each ablation on the same draws, per fold and k
    (site_curve.paired)."""
    blocks = []
    for key, title in PAIRED.items():
        lines = [
            f"- {source}, k = {k}: ECE {row['ece_difference_mean']:+.3f} on average, "
            f"lower in {row['ece_lower_share']:.0%} of {row['draws']} draws; balanced "
            f"recall {row['balanced_recall_difference_mean']:+.3f}"
            for source, fold in curve["folds"].items()
            for k, row in fold.get(key, {}).items()
        ]
        if lines:
            blocks.append(
                f"\n{title[0].upper()}{title[1:]}, paired over the same draws (the "
                "medians above hide how much of a difference is the draws'):\n\n"
                + "\n".join(lines)
                + "\n"
            )
    return "".join(blocks)


def _site_curve_section(report_dir: Path) -> str:
    curve = _report(report_dir, "site_curve.json")
    if curve is None:
        return ""
    rows = []

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "–"
        if isinstance(value, dict):
            return f"{value['median']:.3f} ({value['p10']:.2f}–{value['p90']:.2f})"
        return _rate(value)

    notes = "".join(
        f"{curve[key]}\n" for key in ("note", "note_version") if curve.get(key)
    )
    version = curve.get("calibration_version", 1)
    prior = curve.get("prior")
    fixed = curve.get("prior_strength_ablation", curve.get("prior_strength"))
    fits = {
        "curve": f"v{version}"
        + (
            " + prior, strength chosen by the reads"
            if prior
            else " + prior"
            if curve.get("prior_strength") is not None
            else ""
        )
        + (" (shipped)" if version >= 2 else ""),
        "curve_prior_fixed": f"v{version} + prior, strength fixed at {fixed} (ablation)",
        "curve_without_prior": f"v{version} without prior (ablation)",
        "curve_version_1": "v1 (ablation)",
    }
    for source, fold in curve["folds"].items():
        model = (
            "committed (source in its training)"
            if fold["held_out_in_training"]
            else "fold model"
        )
        for key, fit in fits.items():
            for k, row in fold.get(key, {}).items():
                if k == "training" and key != "curve":
                    continue
                share = row.get("sensitivity_in_0_85_0_95")
                rows.append(
                    (
                        source,
                        model,
                        "–" if k == "training" else fit,
                        k,
                        *(cell(row, m) for m in SITE_CURVE_MEASURES),
                        _rate(share),
                    )
                )
    table = _table(
        (
            "site (held out)",
            "model",
            "calibration",
            "k reads",
            "ECE",
            "ECE if perfectly calibrated",
            "recall normal",
            "recall benign",
            "recall malignant",
            "sensitivity at 0.90",
            "draws in 0.85–0.95",
        ),
        "lllrrrrrrrr",
        rows,
    )
    return f"""
## Site calibration: the site-adaptation curve
`python -m ml site-curve` ({curve["draws"]} draws per k, by patient, seed {curve["seed"]}).
Each held-out source plays a new site: a `SiteCalibration` (`ml/site_calibration.py`,
the portal's and `python -m ml calibrate`'s) is fitted on k of its reads and judged on the
rest (median, 10th–90th percentile over draws). Row "training": the weights' own
calibration and the malignant label as the operating point, on all of the source.
Calibration v2 (shipped) fits the probabilities' offsets and temperature together by
likelihood on the site's reads and gives the label its own balanced-recall offsets, on a grid
(-2..4) wider than the training calibration's (-1..2); v1, kept as an ablation on the same
draws, used the training grid's balanced-recall offsets for both, which calibrates the
probabilities to a uniform class mix instead of the site's. The wider grid was chosen after
seeing the busi fold's v1 draws stop at the grid's edge (normal offset 2.0). The shipped
fit is a correction of the model's own calibration: the offsets and temperature are the
maximum a posteriori fit under a Gaussian prior centred on the training calibration, its
strength the one of {", ".join(str(v) for v in (prior or {}).get("strengths", []))} whose fits
best predict held-out reads ({(prior or {}).get("folds")}-fold cross-validation by patient on
the k reads; `choose_prior_strength` in `ml/site_calibration.py`). The strength was fixed at
{fixed} before (chosen on the busi fold alone): that fit is kept as an ablation, and the other
two folds' fold models, whose training calibrations fit their held-out sources badly (their
"training" rows), are why it changed (`ml/reports/notes.md`); no fold was left unseen to judge
the change. "Without prior" is the same fit from the logits alone. "ECE if perfectly
calibrated": the median ECE of label sets drawn from the fitted probabilities themselves on
the same rest, the least this estimator can show on that many cases (BrEaST-Lesions_USG
leaves about 150 images at k = 100).
{notes}
{table}
{_paired_lines(curve)}
"""


def _crop_stage_section(report_dir: Path) -> str:
    """From ``crop_stage.json`` (``python -m ml crop-stage``); empty without it."""
    report = _report(report_dir, "crop_stage.json")
    if report is None:
        return ""

    def change(row: dict, key: str) -> str:
        low, high = row[f"{key}_difference_ci95"]
        return (
            f"{row[f'{key}_whole']:.3f} → {row[f'{key}_fused']:.3f} "
            f"({row[f'{key}_fused'] - row[f'{key}_whole']:+.3f} [{low:+.3f}, {high:+.3f}])"
        )

    lines = [
        (
            "| held out | fold model | lesion box | features / margin / C (inner choice) | crop alone | "
            "images | AUC m-vs-b, whole → fused | patients | per patient, whole → fused |"
        ),
        "|---|---|---|---|---:|---:|---|---:|---|",
    ]
    for source, fold in report["folds"].items():
        for boxes, name in (
            ("predicted_box", "the fold model's (honest)"),
            ("truth_box", "the truth mask's (upper bound)"),
        ):
            row = fold.get(boxes)
            if row is None:
                continue
            alone = (
                f"{fold['crop_alone_auc_truth_box']:.3f}"
                if boxes == "truth_box"
                else "–"
            )
            lines.append(
                f"| {source} | {fold['model'].removeprefix('busnet-lite0-')} | {name} | "
                f"{fold['features']} / {fold['margin']} / {fold['strength']} | {alone} | "
                f"{row['images']} | "
                f"{change(row, 'auc')} | {row['patients']} | {change(row, 'patient_auc')} |"
            )
    return f"""
## A second look at the lesion: the crop stage (LOSO)
`python -m ml crop-stage` (`ml/training/crop_stage.py`; issue 20's lesion-crop stage, measured
before any of it is in the product). A square crop around the lesion's box, from the scan at
its own resolution, is pooled by the ImageNet EfficientNet-Lite0 at {report["crop_side"]} px (no
ultrasound training): the spatial means of its blocks 4, 10 and 15 (texture at three
scales) or of its last layer; a logistic regression on them (the crop and its mirror)
gives malignant-vs-benign log-odds, averaged with the fold model's calibrated log-odds
(weight {report["fusion_weight"]}, fixed before any fold was scored). Per fold the features, the margin
({", ".join(str(m) for m in report["margins"])} of the box's longer side) and the
regression's strength C are chosen by fitting on one training source and scoring the other,
both ways; the held-out source takes no part. "Predicted" crops around the fold model's own
lesion box (an image without one keeps its whole-image score): the figure that counts;
"truth" crops around the expert mask, an upper bound. Fold scores kept before the boxes were
(`ml/reports/fold_scores/`) have only the upper bound. Per patient: its most suspicious
lesion image. Brackets: 95% bootstrap interval of fused minus whole, resampling patients.

{chr(10).join(lines)}
"""


def _second_look_section(report_dir: Path) -> str:
    """From ``second_look/*.json`` (``python -m ml second-look --out``); empty without."""
    runs = sorted((report_dir / "second_look").glob("*.json"))
    if not runs:
        return ""
    lines = [
        (
            "| run | model | crops from | judged on | margin | AUC m-vs-b (paired 95%) | "
            "per patient | recall n / b / m | ECE | Dice |"
        ),
        "|---|---|---|---|---|---|---|---|---:|---:|",
    ]
    for path in runs:
        report = json.loads(path.read_text())
        test = report["test"]
        for name, row in test["rows"].items():
            paired = test["paired"].get(name)
            auc = f"{row['auc_mb']:.3f}"
            patient = "–"
            if paired:
                low, high = paired["auc_difference_ci95"]
                auc += f" ({low:+.3f}, {high:+.3f})"
                patient = f"{paired['patient_auc_whole']:.3f} → {paired['patient_auc_fused']:.3f}"
            chosen = " (validation's choice)" if name == report["chosen"] else ""
            recall = " / ".join(f"{v:.3f}" for v in row["recall"].values())
            lines.append(
                f"| {path.stem} | {report['model'].removeprefix('busnet-lite0-')} | "
                f"{report['crops_from']} | {', '.join(test['parts'])} | "
                f"{'one pass' if name == 'none' else name}{chosen} | {auc} | {patient} | "
                f"{recall} | {row['ece']:.3f} | {row['dice']:.3f} |"
            )
    return f"""
## A second look at the lesion: the same network on a zoomed crop
`python -m ml second-look` (`ml/training/second_look.py`). The worker's analysis, then the same
network again on a square crop around the lesion box it predicted (the box's longer side
plus the margin of it on each side; taken from the full-resolution scan, or from the model
input the worker stores, stretched back to the scan's size); class logits averaged; Dice is
that of the crop's outline pasted back inside the crop; a scan without a predicted lesion
keeps its one pass. No new weights. "Judged on": the images reported; "validation's choice":
the margin the validation splits (the fold model's training sources') would pick, "one pass"
included. Brackets: 95% bootstrap interval of the two passes minus one, resampling patients.
Per patient: the most suspicious lesion image of each.

The rule, written before any LOSO fold was scored (`notes.md`): margin 0.25, crops from the
model input; adopted if in each fold per-image and per-patient AUC rise, Dice falls by no
more than 0.005 and normal recall by no more than 0.03. The BrEaST fold's Dice (0.480 ->
0.464) ruled out pasting the outline; the BUS-UCLM fold's AUC (0.793 -> 0.780) ruled out the
label-only second look. **Not adopted**: the committed `model.json` looks once
(`"second_look": null`; the `Analyzer` supports `{{"margin": M}}`). The test-split rows are of
the committed model, where the margin was first seen; the LOSO rows are of the fold models
trained in session 13, whose one-pass figures differ from the LOSO table's earlier trainings.

{chr(10).join(lines)}
"""


def _average_from(report: dict) -> str:
    """The epoch the folds of a weight-averaging report averaged from (as their schedules
    record it; several if they differ)."""
    epochs = sorted(
        {
            fold["schedule"]["average_from"]
            for fold in report["folds"].values()
            if fold.get("schedule", {}).get("average_from") is not None
        }
    )
    return " / ".join(str(e) for e in epochs) or "?"


# A pre-registered rule's outcome (True, False, or None while folds are missing).
VERDICT_WORDS = {
    True: "**Adopted**",
    False: "**Not adopted**",
    None: "**Not yet judged**",
}


def _weight_average_section(report_dir: Path) -> str:
    """From ``weight_average.json`` (``python -m ml loso --average-from EPOCH --out``)."""
    from ml.training.loso import AVERAGE_FLOORS, weight_average_verdict

    report = _report(report_dir, "weight_average.json")
    if not report:
        return ""
    names = {
        "auc_malignant_vs_benign": "AUC m-vs-b",
        "dice_lesion_mean": "Dice",
        "recall_normal": "recall normal",
        "recall_malignant": "recall malignant",
        "ece": "ECE",
    }
    lines = [
        "| held out | run: best epoch / averaged | averaged epochs | "
        + " | ".join(names.values())
        + " | AUC m-vs-b per patient |",
        "|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for source, fold in report["folds"].items():
        paired = fold.get("weight_average")
        if not paired:
            continue
        cells = []
        for name in names:
            m = paired["measures"][name]
            low, high = m["ci95"] or (float("nan"), float("nan"))
            # ECE's difference is signed so that positive is better (best minus averaged).
            cells.append(
                f"{_figure({'value': m['baseline']})} → {_figure({'value': m['candidate']})} "
                f"({m['difference']:+.3f} [{low:+.3f}, {high:+.3f}])"
            )
        epochs = paired["averaged_epochs"]
        patient = "–"
        if "patient_auc" in paired:
            patient = " → ".join(
                _figure({"value": paired["patient_auc"][k]})
                for k in ("best_epoch", "averaged")
            )
        lines.append(
            f"| {source} | {paired['best_epoch_model'].removeprefix('busnet-lite0-')} / "
            f"{fold['model_version'].removeprefix('busnet-lite0-')} | "
            f"{epochs[0]}-{epochs[-1]} ({len(epochs)}) | "
            + " | ".join(cells)
            + f" | {patient} |"
        )
    adopted, reasons = weight_average_verdict(report)
    verdict = VERDICT_WORDS[adopted]
    floors = ", ".join(f"{names[k]} {v:+.3f}" for k, v in AVERAGE_FLOORS.items())
    start = _average_from(report)
    return f"""
## Weight averaging (LOSO, paired within each training run)
`python -m ml loso --average-from {start}` (`ml/training/fit.py`): the fold model is the uniform
mean of its weights at the end of every epoch from {start} on (SWA, Izmailov et al. 2018; SWAD,
Cha et al. 2021, for unseen domains), and the same run's best epoch is kept beside it, each
calibrated and given its OOD statistics on the training sources' validation splits. Both are
scored on every held-out image: "best epoch → averaged (difference [95% paired bootstrap
interval by patient])", ECE's difference signed so that positive is better. Comparing within
one run takes the training-to-training spread (see Ablation) out of the comparison. Per
patient: the most suspicious image of each patient (or duplicate group), point figures. Rule,
written before any fold was scored (`notes.md`): in every judged fold (at least two) the
differences are at least {floors}, and the mean over folds of the AUC and Dice differences
summed is positive. {verdict}: {"; ".join(reasons)}.

{chr(10).join(lines)}
"""


def _backbone_section(report_dir: Path) -> str:
    """From ``backbone_lite2.json`` (``python -m ml loso --backbone lite2 --out``)."""
    from ml.training.loso import (
        BACKBONE_AUC_MARGIN,
        BACKBONE_DICE_FLOOR,
        LITE0_TRAININGS,
        backbone_bars,
        backbone_verdict,
        lite0_means,
    )

    report = _report(report_dir, "backbone_lite2.json")
    if not report:
        return ""
    auc, dice = "auc_malignant_vs_benign", "dice_lesion_mean"
    bars, means = backbone_bars(), lite0_means()
    rows = []
    for source, lite0 in LITE0_TRAININGS.items():
        fold = report["folds"].get(source)
        m = fold["metrics"] if fold else {}
        rows.append(
            (
                source,
                f"{means[source][auc]:.3f} "
                + f"({min(lite0[auc]):.3f}–{max(lite0[auc]):.3f}, {len(lite0[auc])})",
                f"{bars[source][auc]:.3f}",
                _figure(m.get(auc)) if fold else "not run",
                f"{fold['patient_auc']:.3f}" if fold and "patient_auc" in fold else "–",
                f"{means[source][dice]:.3f}",
                f"{bars[source][dice]:.3f}",
                _figure(m.get(dice)) if fold else "not run",
                " / ".join(_figure(m.get(f"recall_{c}")) for c in CLASSES)
                if fold
                else "–",
                _figure(m.get("ece")) if fold else "–",
                fold["model_version"] if fold else "–",
            )
        )
    adopted, reasons = backbone_verdict(report)
    verdict = VERDICT_WORDS[adopted]
    table = _table(
        (
            "held out",
            "Lite0 AUC m-vs-b: mean (range, trainings)",
            "bar",
            "Lite2 AUC m-vs-b",
            "Lite2 per patient",
            "Lite0 Dice mean",
            "bar",
            "Lite2 Dice",
            "Lite2 recall n / b / m",
            "Lite2 ECE",
            "Lite2 fold model",
        ),
        "lrrrrrrrlrl",
        rows,
    )
    return f"""
## A larger encoder: EfficientNet-Lite2 (LOSO)
`python -m ml loso --backbone lite2 --fold SOURCE` (`ml/backbone.py`; ImageNet weights from
`shared/weights/efficientnet_lite2_imagenet`): the production recipe and schedule at 256 px
with Lite2's 21 blocks in place of Lite0's 16, one training per fold. The Lite0 columns are
every production-schedule training of that fold the notes record (the same recipe and seed
give a fold's AUC a spread of about 0.02-0.03), so one Lite2 training is judged against their
mean: rule, written before any Lite2 fold was scored (`notes.md`), in every fold AUC m-vs-b at
least the Lite0 mean plus {BACKBONE_AUC_MARGIN:.2f} and Dice at least the Lite0 mean minus
{-BACKBONE_DICE_FLOOR:.3f}, and `python -m bench ml` within 50 ms a scan. Per patient: the most
suspicious image of each patient (or duplicate group). {verdict}: {"; ".join(reasons)}.

{table}
"""


def _loso_finetune_section(report_dir: Path) -> str:
    report = _report(report_dir, "loso_finetune.json")
    if report is None:
        return ""
    rows = []

    def cell(figures: dict, name: str) -> str:
        m = figures.get(name)
        if not m or m["baseline"] is None or m["candidate"] is None:
            return "–"
        ci = m["ci95"]
        interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        return (
            f"{m['baseline']:.3f} → {m['candidate']:.3f} "
            f"({m['difference']:+.3f}{interval}, {m['verdict']})"
        )

    def recipe(row: dict) -> str:
        # Rows of the first recipe carry neither field: it had neither guard.
        if not row.get("freeze_batchnorm", False) and row.get("blend", 1.0) == 1.0:
            return "first (no guards)"
        rule = row.get("blend_rule")
        anchor = row.get("anchor_strength") or 0.0
        return (
            f"guarded, blend {row.get('blend', 1.0):.2f}"
            + (f" (rule: {rule})" if rule else "")
            + (f", L2-SP {anchor:g}" if anchor else "")
        )

    for source, by_k in report["folds"].items():
        for key, row in by_k.items():
            for label, figures in row["sets"].items():
                name = "rest of the site" if label.startswith("site:") else label
                rows.append(
                    (
                        source,
                        str(row["baseline"]).removeprefix("busnet-lite0-"),
                        key.split("-")[0],
                        recipe(row),
                        name,
                        str(figures["n"]),
                        cell(figures, "auc_malignant_vs_benign"),
                        cell(figures, "dice_lesion_mean"),
                        cell(figures, "ece"),
                    )
                )
    table = _table(
        (
            "held out (the site)",
            "fold model",
            "k",
            "recipe",
            "set",
            "images",
            "AUC m vs b: before → after",
            "Dice: before → after",
            "ECE: before → after",
        ),
        "llrllrlll",
        rows,
    )
    return f"""
## Fine-tuning on a new site's own scans (LOSO)
`python -m ml loso-finetune --fold SOURCE --k 100 200` (`ml/training/loso_finetune.py`):
the fold model trained without SOURCE is fine-tuned by `python -m ml finetune`'s recipe
(default schedule and 20-minute budget) on about k of SOURCE's images drawn by patient,
then `python -m ml compare` judges it against the fold model on every other image of
SOURCE and on the fold's original test splits. Differences are candidate minus baseline
(ECE: baseline minus candidate, so positive is better) with paired 95% bootstrap
intervals by patient, and the verdict by the rule fixed in `ml/training/compare.py`
("worse" also when the interval is too wide to exclude a drop beyond the margin, as on
the small original test splits). Folds and k not listed were not run.
Recipe "first": the fine-tuning of session 6 (the decoder's and heads' batch-norm
statistics moved with the site's batches; the tuned weights shipped as they were).
"guarded": every batch norm keeps the base's statistics and the tuned weights are blended
back towards the base's, `base + a * (tuned - base)` (WiSE-FT), `a` chosen on validation
by `ml.training.finetune.choose_blend` (the best site validation score among the blends
losing at most 0.01 AUC or Dice on the original sources' validation images; 0 is the
base). The first recipe's rows stay beside the guarded ones (`python -m ml loso-finetune
--fold SOURCE --k 200 --tag first --no-blend --no-freeze-batchnorm`), on the same fold
model where the row's "before" figures match.
{report.get("note", "")}

{table}
"""


def _second_look_text(margin: float | None) -> str:
    if margin is None:
        return "The figures below are of one look at each scan (no second look).\n"
    return (
        f"**Second look** (margin {margin}): where a lesion is found, the network runs again "
        "on a square crop around its box (the box's longer side plus "
        f"{margin} of it on each side, from the model input stretched back to the scan's "
        "size) and the label comes from both looks' class logits averaged; the outline, box "
        "and heatmaps stay the whole scan's. The figures below include it.\n"
    )


def _ood_threshold_text(ood: dict) -> str:
    """Which threshold the flag applies: the archive's validation percentile, or the
    caution's that model.json re-set from it (reports before that lack the percentile)."""
    own = ood.get("validation_threshold")
    if own is None or abs(ood["threshold"] - own) < 1e-9:
        return (
            f"Threshold {ood['threshold']:.1f}: the 97.5th percentile of the pooled "
            "validation images' scores."
        )
    return (
        f'Threshold {ood["threshold"]:.1f}: the caution\'s (see "Unusual for this model" '
        f"below), {ood['threshold'] / own:.1f} times the 97.5th percentile of the pooled "
        f"validation images' scores ({own:.1f}), the multiple set by leave-one-source-out."
    )


def write_model_card(report_dir: Path, card_path: Path) -> None:
    report = json.loads((report_dir / "metrics.json").read_text())
    loso = _report(report_dir, "loso.json")
    training = report.get("training", {})
    relative = (
        report_dir.relative_to(card_path.parent)
        if report_dir.is_relative_to(card_path.parent)
        else report_dir
    )
    bias = ", ".join(
        f"{name} {value:+.2f}"
        for name, value in zip(
            ("normal", "benign", "malignant"), report["class_bias"], strict=True
        )
    )
    per_source = {"pooled": report["pooled_test"], **report["per_source_test"]}
    targets = "\n".join(
        f"| {LABELS[key]} | {t['op']} {t['target']:.2f} | {t['value']:.3f} | "
        f"{'met' if t['met'] else '**missed**'} |"
        for key, t in report["targets"].items()
    )
    ood = report["ood"]
    notes_path = report_dir / "notes.md"
    notes = notes_path.read_text().strip() if notes_path.is_file() else "None recorded."
    plots = "\n".join(
        f"![{name}]({relative}/{name})" for name in report.get("plots", [])
    )
    sources = "\n".join(
        f"- **{s.name}** ({s.country}) — {s.citation}. Licence: {s.licence}."
        for s in SOURCES.values()
    )
    test_counts = ", ".join(f"{k} {v}" for k, v in report["test_images"].items())
    loso_text = (
        "Each row names the schedule that trained its fold (folds run one at a time, "
        "`--fold NAME`; the production schedule is 24 epochs, 2 with the encoder frozen, "
        "patience 8); the production recipe otherwise. Each fold selects its epoch, fits its "
        "calibration and OOD statistics on the "
        "two training sources' validation splits, and is scored on every used image of the "
        "held-out source (95% intervals resample patients / duplicate groups).\n\n"
        + _loso_table(loso)
        if loso
        else "Not run for these weights."
    )
    text = f"""# Model card: {report["model_version"]}

BUSNet: one EfficientNet-Lite0 encoder (ImageNet-pretrained, Apache-2.0 weights from
`shared/weights/efficientnet_lite0_imagenet`) shared by a 3-class classification head
(normal / benign / malignant) and a U-Net-style lesion decoder. **Input policy**: the whole
scan resized to {report["image_size"]}x{report["image_size"]}, converted to luminance (ITU-R BT.601) and repeated
into three channels (`ml/preprocess.py`, the one definition training and inference share):
colour tints and coloured annotations differ between sites and say nothing about the breast.
Outputs: calibrated class probabilities (per-class logit offsets {bias} for balanced recall,
then temperature {report["temperature"]:.3f}; both fitted on the pooled validation splits of
the three sources), a lesion mask at the scan's resolution, Grad-CAM of the **displayed**
class and Seg-Grad-CAM, and an out-of-distribution flag with its score.
{_second_look_text(report.get("second_look"))}Weights: `ml/weights/weights.npz` (float16), `ml/weights/model.json`; the version is the
model name plus the first 12 hex digits of the archive's sha256.

## Intended use, and what it must not be used for
Decision support for trained radiologists reading B-mode breast ultrasound: a second look,
a worklist ordered by suspicion, a starting outline of the lesion. **It is not a diagnosis**
and must not be used without a radiologist's review, nor for screening decisions on its own,
nor on colour-Doppler or elastography frames, other organs, or children. **Non-commercial
use only**: BUS-UCLM's licence is CC BY-NC 4.0 and the weights inherit it. When an analysis
is flagged out of distribution the product says "outside what the model was trained on —
result not reliable"; such results must not be relied on.

## Data
{sources}

Each source is read in place (`shared/data/<source>/`, or `$BUSI_DIR`, `$BUS_UCLM_DIR`,
`$BREAST_LESIONS_USG_DIR`) by one manifest reader (`ml/training/sources.py`). Splits
(`ml/splits/<source>.json`, seed fixed, committed) are group-aware and stratified, about
70 / 15 / 15: BUS-UCLM and BrEaST-Lesions_USG by patient (BUS-UCLM patients dealt by their
most serious class, so its 17 patients with a malignant lesion spread over the splits); BUSI,
which names no patients, by duplicate groups (identical pixels, the shipped candidate pairs,
the README's confirmed pairs, thumbnail similarity). No patient or group crosses splits
(tests check it). **Excluded**: BUS-UCLM's 37 colour-Doppler and 6 side-by-side images — a
flow overlay or two views in one frame are not the B-mode scan the product analyses, and
they would teach the network that colour boxes go with lesions; they appear in no split.
Test images: {test_counts}.

## Training
`python -m ml train` on the three train splits together: {training.get("train_images", "?")} training and
{training.get("val_images", "?")} validation images; {training.get("epochs_run", "?")} epochs run, best epoch
{training.get("best_epoch", "?")} by pooled validation score (balanced recall + malignant-vs-benign AUC + lesion Dice).
**Sampling**: every epoch draws as many images as the training set has, each source weighted
by 1/sqrt(its size) and then every class given equal weight, so the small Polish set and the
malignant class are not drowned by BUSI and BUS-UCLM's normals. **Augmentation** imitating
what differs between sites (`ml/training/augment.py`): random resized crops with aspect
change and occasional zoom-out onto a black border, horizontal flip, gain / offset / contrast
/ gamma, multiplicative speckle at random grain size, blur, JPEG re-compression, synthetic
calipers, crosses, dotted measurement lines, text and scale ticks burned in, and a colour
tint. **Losses**: cross-entropy with label smoothing 0.05; BCE + soft Dice for the mask.
AdamW, encoder frozen for the first epochs then fine-tuned with cosine decay (learning rate
{training.get("learning_rate", "?")}), encoder batch-norm statistics frozen, batch {training.get("batch_size", "?")}, seed {training.get("seed", "?")}.
Per-epoch figures: `ml/reports/training_log.csv`.

## Results on the three test splits
Through the same `Analyzer` the workers use; masks scored at each image's own resolution.
95% intervals: percentile bootstrap over patients / duplicate groups, 1000 resamples.
Expected calibration error before temperature scaling (pooled): {report["uncalibrated_ece_pooled"]:.3f}.

{_metrics_table(per_source, tuple(LABELS))}

Targets (pooled test):

| measure | target | value | |
|---|---|---:|---|
{targets}

## Leave one source out — the honest external estimate
`python -m ml loso` trains on two sources and tests on the whole third.

{loso_text}

## Out-of-distribution flag
Score: squared Mahalanobis distances of the spatial means of the encoder's last blocks at
strides {", ".join(str(s) for s in FEATURE_STRIDES)} and of the class layer (`head_relu`, 1280 values) from their means on the training images,
each with a Ledoit-Wolf shrunk covariance and divided by its channel count, summed (Lee et
al., NeurIPS 2018, feature ensemble). {_ood_threshold_text(ood)} Pooled test images judged in distribution:
{ood["test_in_distribution_rate"]:.3f}. Corpus of {ood["corpus_images"]} images that are not breast ultrasound
(`ml/training/ood_corpus.py`: documents, screenshots, blank frames, noise, gradients, colour
bars, chest X-ray-like and CT-like synthetic images, and scikit-image's photographs and
micrographs): {ood["corpus_flagged_rate"]:.3f} flagged. Not flagged: {", ".join(ood["corpus_not_flagged"]) or "none"}.
{_gate_section(report_dir)}{_caution_section(report_dir)}{_site_curve_section(report_dir)}{_crop_stage_section(report_dir)}{_second_look_section(report_dir)}{_weight_average_section(report_dir)}{_backbone_section(report_dir)}{_loso_finetune_section(report_dir)}
## Ablation (effect of each choice on LOSO)
{_ablation_section(report_dir, loso)}

## Plots
{plots}

## Notes on this run
{notes}

## Limits
- Three public datasets, three hospitals; other scanners, operators and populations differ.
  LOSO is the best estimate this project can compute of another hospital; it is still only
  three sites, and BrEaST-Lesions_USG has 4 normal images, so it cannot measure normals.
- Test splits are small and patients few (BUS-UCLM: 38 patients in all), so intervals are wide.
- Burned-in marks are augmented against, not removed; Grad-CAM lets a reader see when the
  network looks at a caliper.
- The out-of-distribution flag catches inputs unlike breast ultrasound; it does not catch a
  breast ultrasound from a scanner it handles badly. Agreement monitoring in the portal does.
- Labels are as published (biopsy or follow-up); some BUSI duplicates carry conflicting labels.

## Reproduce
```
python -m ml split busi bus-uclm breast-lesions-usg   # the committed splits
python -m ml train      # ml/weights/ (24 epochs: about 20 minutes on 2 CPU cores)
python -m ml loso       # ml/reports/loso.json (three trainings on the same schedule: 30-45 minutes each)
python -m ml evaluate   # ml/reports/ and this card
```
or `make train loso evaluate`. `python -m ml loso` trains each fold on the production schedule
(24 epochs, 2 frozen, patience 8); the ablation rows marked "12 epochs, 1 frozen" add
`--epochs 12 --frozen-epochs 1 --patience 12`.
"""
    card_path.write_text(text)


if __name__ == "__main__":  # regenerate the card from the committed reports
    write_model_card(PACKAGE_DIR / "reports", PACKAGE_DIR / "MODEL_CARD.md")
