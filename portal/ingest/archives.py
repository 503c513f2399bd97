"""Reading uploaded zip archives safely, one member at a time, never onto disk.

Members are read into memory one by one (each bounded by the per-file limit) and handed
to the caller; nothing is extracted to the file system, so a hostile member name cannot
write anywhere. Names that would escape a folder are still refused and reported, like
links and encrypted members. Limits on the number of files, the total uncompressed size
and the compression ratio stop zip bombs before they are expanded; the budget is shared
by nested archives, which are opened only to a bounded depth.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Other containers people send by mistake, recognised by their first bytes.
OTHER_ARCHIVES = (
    (b"\x1f\x8b", "a gzip file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
    (b"PK\x07\x08", "a split (multi-part) zip"),
)
# Operating-system clutter that is not part of what the user meant to send.
IGNORED_PARTS = frozenset({"__MACOSX"})
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Ratios are only meaningful for members big enough to matter.
RATIO_MIN_BYTES = 1024 * 1024


def human_bytes(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def is_zip(head: bytes) -> bool:
    return head[:4] in ZIP_MAGIC


def other_archive_kind(head: bytes) -> str | None:
    for magic, kind in OTHER_ARCHIVES:
        if head.startswith(magic):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive"
    return None


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int
    max_total_bytes: int
    max_member_bytes: int
    max_ratio: int
    max_depth: int  # 1: the uploaded zip only; 2: zips inside it are opened too


@dataclass
class ArchiveBudget:
    """What the whole upload has used so far, shared by every archive in it."""

    files: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class ArchiveMember:
    """One file from an archive: its content, or the reason it was not read."""

    name: str  # path inside the uploaded zip (nested zips: "inner.zip/path")
    content: bytes | None = None
    error: str | None = None


@dataclass
class ArchiveReport:
    """Whole-archive problems (bad zip, over the limits, empty) found while reading."""

    errors: list[str] = field(default_factory=list)
    files: int = 0


def unsafe_name_reason(name: str) -> str | None:
    if "\x00" in name:
        return "unsafe name in the zip (contains a NUL byte); not read"
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "unsafe path in the zip (absolute path); not read"
    if ".." in PurePosixPath(normalised).parts:
        return (
            "unsafe path in the zip (it climbs out of the folder with '..'); not read"
        )
    return None


def _is_ignored(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts:
        return True
    return (
        any(part in IGNORED_PARTS for part in parts)
        or parts[-1] in IGNORED_NAMES
        or parts[-1].startswith("._")
    )


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _member_problem(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str | None:
    reason = unsafe_name_reason(info.filename)
    if reason:
        return reason
    if _is_symlink(info):
        return "symbolic link in the zip; links are not followed"
    if info.flag_bits & 0x1:
        return (
            "encrypted (password-protected) in the zip; zip it again without a password"
        )
    if info.file_size > limits.max_member_bytes:
        return (
            f"{human_bytes(info.file_size)} uncompressed, larger than the "
            f"{human_bytes(limits.max_member_bytes)} limit per file"
        )
    if info.file_size >= RATIO_MIN_BYTES:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            return (
                f"compressed {ratio:,.0f}:1, over the limit of {limits.max_ratio}:1 "
                "(a possible zip bomb); not expanded"
            )
    return None


def iter_zip(
    source: BinaryIO,
    *,
    limits: ArchiveLimits,
    budget: ArchiveBudget,
    report: ArchiveReport,
    prefix: str = "",
    depth: int = 1,
) -> Iterator[ArchiveMember]:
    """Yield every file of a zip (and of zips inside it, up to `limits.max_depth`).

    Problems with the archive as a whole go to `report.errors` and stop the archive;
    problems with one member are yielded as that member's error and the rest go on.
    """
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        report.errors.append(f"not a readable zip archive ({exc})")
        return
    with archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir() and not _is_ignored(info.filename)
        ]
        declared = sum(info.file_size for info in members)
        if budget.files + len(members) > limits.max_files:
            report.errors.append(
                f"the upload holds more than {limits.max_files:,} files "
                f"({budget.files + len(members):,}); split it into smaller zips"
            )
            return
        if budget.total_bytes + declared > limits.max_total_bytes:
            report.errors.append(
                f"the zip expands to {human_bytes(budget.total_bytes + declared)}, over "
                f"the {human_bytes(limits.max_total_bytes)} limit per upload; split it"
            )
            return
        budget.files += len(members)
        report.files += len(members)
        for info in members:
            name = f"{prefix}{info.filename}"
            problem = _member_problem(info, limits)
            if problem:
                yield ArchiveMember(name, error=problem)
                continue
            try:
                with archive.open(info) as handle:
                    # ZipExtFile stops at the declared size and checks the CRC at the end,
                    # so a member cannot expand beyond what was checked above.
                    content = handle.read(limits.max_member_bytes + 1)
            except NotImplementedError as exc:
                yield ArchiveMember(name, error=f"unsupported zip compression: {exc}")
                continue
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                yield ArchiveMember(name, error=f"corrupt in the zip ({exc})")
                continue
            if len(content) > limits.max_member_bytes:
                yield ArchiveMember(
                    name,
                    error=f"larger than the {human_bytes(limits.max_member_bytes)} limit per file",
                )
                continue
            budget.total_bytes += len(content)
            if is_zip(content):
                if depth >= limits.max_depth:
                    yield ArchiveMember(
                        name,
                        error=(
                            "a zip inside a zip is opened only "
                            f"{limits.max_depth - 1} level(s) deep; unpack it first"
                        ),
                    )
                    continue
                nested = ArchiveReport()
                yield from iter_zip(
                    io.BytesIO(content),
                    limits=limits,
                    budget=budget,
                    report=nested,
                    prefix=f"{name}/",
                    depth=depth + 1,
                )
                if nested.errors:
                    yield ArchiveMember(name, error="; ".join(nested.errors))
                elif nested.files == 0:
                    yield ArchiveMember(name, error="the zip inside is empty")
                continue
            yield ArchiveMember(name, content=content)
