"""Model versions on disk: the shipped one (ML_WEIGHTS_DIR) and those installed beside it
(ML_MODELS_DIR/<version>/), read without TensorFlow through ml.weights_io.

A version's folder is named by the version, which is the model's name and the first 12
hex digits of its weights' sha256 (ml.weights_io.save): installing checks both, so a
folder always holds the bytes its name says. The portal reads the card, lineage and
comparison report from here; the worker finds the weights of the version an analysis
names here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from ml.weights_io import (
    META_FILE,
    WEIGHTS_FILE,
    ModelLoadError,
    ModelMeta,
    read_meta,
    sha256_of,
)

COMPARE_REPORT = "compare_report.json"
# What a version's folder holds (python -m ml finetune and compare write them); anything
# else in the folder given to install_model stays behind.
INSTALLED_FILES = (
    WEIGHTS_FILE,
    META_FILE,
    COMPARE_REPORT,
    "compare_report.md",
    "site_split.json",
    "training_log.csv",
)
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# model.json fields too large (or too technical) for a card.
_NOT_ON_CARD = ("gate", "training", "ood")


class InstallError(ValueError):
    """The folder is no model this portal can install; str() says why."""


@dataclass(frozen=True)
class Described:
    """What the registry keeps of a version's folder."""

    version: str
    name: str
    weights_sha256: str
    card: dict[str, Any]
    lineage: dict[str, Any]
    comparison: dict[str, Any] | None

    def record_fields(self) -> dict[str, Any]:
        """A ModelVersion's fields from what the folder says (all but the version and
        how it came: shipped or installed)."""
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "card": self.card,
            "lineage": self.lineage,
            "comparison": self.comparison,
        }


def shipped_version() -> str | None:
    """The version of the model in ML_WEIGHTS_DIR (None: none is there)."""
    try:
        version = read_meta(Path(settings.ML_WEIGHTS_DIR)).version
    except ModelLoadError:
        return None
    return version.strip() if isinstance(version, str) and version.strip() else None


def version_dir(version: str) -> Path | None:
    """The folder holding `version`'s weights, or None when it is not on this machine."""
    if version and version == shipped_version():
        return Path(settings.ML_WEIGHTS_DIR)
    if not VERSION_PATTERN.match(version or ""):
        return None
    directory = Path(settings.ML_MODELS_DIR) / version
    try:
        meta = read_meta(directory)
    except ModelLoadError:
        return None
    return directory if meta.version == version else None


def version_meta(version: str) -> ModelMeta | None:
    directory = version_dir(version)
    return None if directory is None else read_meta(directory)


def _lineage(meta: ModelMeta) -> dict[str, Any]:
    training = meta.training or {}
    return {
        "finetuned_from": training.get("finetuned_from"),
        "site_sources": training.get("site_sources") or [],
        "sources": training.get("sources") or [],
        "train_images": training.get("train_images"),
        "site_train_images": training.get("site_train_images"),
        "val_images": training.get("val_images"),
        "epochs_run": training.get("epochs_run"),
        "best_epoch": training.get("best_epoch"),
    }


def _finite(value: Any) -> Any:
    """JSON as PostgreSQL keeps it: a measure that could not be computed (NaN, written
    by python -m ml compare for "n/a") becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _comparison(directory: Path) -> dict[str, Any] | None:
    path = directory / COMPARE_REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InstallError(f"{COMPARE_REPORT} is unreadable: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("sets"), dict):
        raise InstallError(f"{COMPARE_REPORT} is not a report of python -m ml compare")
    report.pop("markdown", None)
    return _finite(report)


def describe(directory: Path) -> Described:
    """Card, lineage and comparison report of the model in `directory`."""
    try:
        meta = read_meta(directory)
    except ModelLoadError as exc:
        raise InstallError(str(exc)) from None
    version = str(meta.version or "").strip()
    if not VERSION_PATTERN.match(version):
        raise InstallError(f"{META_FILE} names no usable version ({version!r})")
    card = {
        key: _finite(value)
        for key, value in dataclasses.asdict(meta).items()
        if key not in _NOT_ON_CARD
    }
    card["has_gate"] = bool(meta.gate)
    return Described(
        version=version,
        name=str(meta.name or ""),
        weights_sha256=str(meta.weights_sha256 or ""),
        card=card,
        lineage=_finite(_lineage(meta)),
        comparison=_comparison(directory),
    )


def unpack(archive: IO[bytes], into: Path, *, max_bytes: int) -> list[str]:
    """Extract a model folder sent as a zip (its files at the top, or in one folder) into
    `into`: only the files a version's folder holds (INSTALLED_FILES), each by its own
    name, so no member's path can reach outside `into`; at most `max_bytes` in all,
    counted as they are read (a member's declared size is not trusted). Returns the
    names of the members left out."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            wanted: dict[str, zipfile.ZipInfo] = {}
            left_out = []
            for info in members:
                # Some archivers write "\\" between folders.
                parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
                name = parts[-1] if parts else ""
                if name in INSTALLED_FILES and len(parts) <= 2:
                    if name in wanted:
                        raise InstallError(f"the archive holds {name} twice")
                    wanted[name] = info
                else:
                    left_out.append(info.filename)
            for required in (META_FILE, WEIGHTS_FILE):
                if required not in wanted:
                    raise InstallError(
                        f"no {required} in the archive: send the folder python -m ml "
                        "finetune wrote (with compare_report.json), zipped"
                    )
            total = 0
            for name, info in wanted.items():
                with bundle.open(info) as member, (into / name).open("wb") as out:
                    while chunk := member.read(1024 * 1024):
                        total += len(chunk)
                        if total > max_bytes:
                            raise InstallError(
                                f"the model's files are larger than {max_bytes} bytes"
                            )
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InstallError(f"not a readable zip archive ({exc})") from None
    except NotImplementedError as exc:  # a compression method zipfile does not know
        raise InstallError(f"the archive cannot be read: {exc}") from None
    return left_out


@dataclass(frozen=True)
class Copied:
    described: Described
    directory: Path
    # False: the folder was there already, left by an install that stopped before it
    # was recorded, and holds the same, checked bytes (adopted, not copied again).
    copied: bool


def copy_in(source: Path) -> Copied:
    """Copy a model folder (python -m ml finetune's output, with its compare report) to
    ML_MODELS_DIR/<version>/; the weights must be the bytes its version names.

    The caller records the version, and removes the folder (remove) when recording it
    fails. A folder left by an install that stopped between the two (a crash, a kill) is
    adopted when it holds the same checked bytes, so the install can be run again."""
    source = Path(source)
    described = describe(source)
    if not (source / WEIGHTS_FILE).is_file():
        raise InstallError(f"no {WEIGHTS_FILE} in the folder")
    if described.version == shipped_version():
        raise InstallError("this is the shipped model: it is installed already")
    root = Path(settings.ML_MODELS_DIR)
    target = root / described.version
    if target.exists():
        return Copied(_adopted(target, described), target, copied=False)
    root.mkdir(parents=True, exist_ok=True)
    # Copied beside the target, checked, then renamed: a worker never sees half a folder,
    # and the bytes checked are the bytes installed (not the source's, which may change).
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=root))
    try:
        for name in INSTALLED_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        described = describe(staging)
        if described.version != target.name:
            raise InstallError("the folder changed while it was copied: install again")
        _check_weights(staging, described)
        try:
            staging.rename(target)
        except OSError:
            raise InstallError(f"{described.version} is installed already") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Copied(described, target, copied=True)


def _adopted(target: Path, wanted: Described) -> Described:
    """What an unrecorded folder of `wanted`'s version holds, once checked to be it."""
    try:
        found = describe(target)
        _check_weights(target, found)
    except InstallError as exc:
        raise InstallError(
            f"{target} is there but is not an intact copy of {wanted.version} ({exc}): "
            "move it away and install again"
        ) from None
    if found.weights_sha256 != wanted.weights_sha256:
        raise InstallError(f"{target} holds other weights than the folder to install")
    return found


def remove(copied: Copied) -> None:
    """Undo copy_in when the version could not be recorded (a folder it adopted stays:
    it was there before)."""
    if copied.copied:
        shutil.rmtree(copied.directory, ignore_errors=True)


def _check_weights(directory: Path, described: Described) -> None:
    digest = sha256_of(directory / WEIGHTS_FILE)
    if digest != described.weights_sha256:
        raise InstallError(f"{WEIGHTS_FILE} does not match the sha256 in {META_FILE}")
    if described.version != f"{described.name}-{digest[:12]}":
        raise InstallError(
            f"the version {described.version!r} is not the model's name and the first "
            "12 digits of its weights' sha256"
        )
