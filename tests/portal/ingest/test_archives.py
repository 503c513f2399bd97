"""Zip safety, without a database: what iter_zip yields for hostile archives."""

from __future__ import annotations

import io
import zipfile

import pytest

from portal.ingest.archives import (
    ArchiveBudget,
    ArchiveLimits,
    ArchiveReport,
    is_zip,
    iter_zip,
    other_archive_kind,
)
from tests.portal.ingest.factories import png, zip_of

LIMITS = ArchiveLimits(
    max_files=50,
    max_total_bytes=20 * 1024 * 1024,
    max_member_bytes=5 * 1024 * 1024,
    max_ratio=100,
    max_depth=2,
)


def read(data: bytes, limits: ArchiveLimits = LIMITS):
    report = ArchiveReport()
    members = list(
        iter_zip(io.BytesIO(data), limits=limits, budget=ArchiveBudget(), report=report)
    )
    return members, report


def errors(members) -> dict[str, str]:
    return {m.name: m.error for m in members if m.error}


def test_it_reads_members_in_nested_folders():
    members, report = read(zip_of([("a/b/one.png", png()), ("two.png", png(value=9))]))
    assert [m.name for m in members] == ["a/b/one.png", "two.png"]
    assert members[0].content == png() and not report.errors


@pytest.mark.parametrize(
    "name", ["../escape.png", "a/../../escape.png", "/etc/escape.png", "C:/x.png"]
)
def test_it_refuses_paths_outside_the_folder_and_goes_on(name):
    members, _ = read(zip_of([(name, png()), ("fine.png", png(value=3))]))
    assert "unsafe path" in errors(members)[name]
    assert [m.name for m in members if m.content] == ["fine.png"]


def test_it_refuses_backslash_traversal():
    members, _ = read(zip_of([("..\\..\\evil.png", png())]))
    assert "unsafe path" in errors(members)["..\\..\\evil.png"]


def test_it_does_not_follow_symbolic_links():
    members, _ = read(zip_of([], symlinks=[("link.png", "/etc/passwd")]))
    assert "symbolic link" in errors(members)["link.png"]


def test_a_highly_compressed_member_is_refused_as_a_bomb():
    bomb = b"\0" * (4 * 1024 * 1024)  # deflates about 1000:1
    members, _ = read(zip_of([("bomb.png", bomb), ("ok.png", png())]))
    assert "possible zip bomb" in errors(members)["bomb.png"]
    assert [m.name for m in members if m.content] == ["ok.png"]


def test_a_member_over_the_size_limit_is_refused_before_reading():
    big = zip_of([("big.png", b"x" * 1024)], compression=zipfile.ZIP_STORED)
    limits = ArchiveLimits(**{**LIMITS.__dict__, "max_member_bytes": 100})
    members, _ = read(big, limits)
    assert "limit per file" in errors(members)["big.png"]


def test_an_archive_that_expands_beyond_the_total_limit_is_refused_whole():
    limits = ArchiveLimits(**{**LIMITS.__dict__, "max_total_bytes": 1000})
    members, report = read(zip_of([(f"{i}.png", b"y" * 400) for i in range(3)]), limits)
    assert members == [] and "over the" in report.errors[0]


def test_too_many_files_are_refused_whole():
    limits = ArchiveLimits(**{**LIMITS.__dict__, "max_files": 3})
    members, report = read(
        zip_of([(f"{i}.png", png(value=i)) for i in range(4)]), limits
    )
    assert members == [] and "more than 3 files" in report.errors[0]


def test_a_nested_zip_is_opened_one_level_and_shares_the_budget():
    inner = zip_of([("deep/inner.png", png(value=7))])
    members, _ = read(zip_of([("batch/inner.zip", inner), ("top.png", png())]))
    assert {m.name for m in members if m.content} == {
        "batch/inner.zip/deep/inner.png",
        "top.png",
    }


def test_a_zip_in_a_zip_in_a_zip_is_refused():
    innermost = zip_of([("x.png", png())])
    middle = zip_of([("innermost.zip", innermost)])
    members, _ = read(zip_of([("middle.zip", middle)]))
    assert "opened only 1 level(s) deep" in errors(members)["middle.zip/innermost.zip"]
    assert not [m for m in members if m.content]


def test_nested_zips_cannot_exceed_the_file_limit_together():
    limits = ArchiveLimits(**{**LIMITS.__dict__, "max_files": 4})
    inner = zip_of([(f"{i}.png", png(value=i)) for i in range(4)])
    members, _ = read(zip_of([("inner.zip", inner)]), limits)
    assert "more than 4 files" in errors(members)["inner.zip"]


def test_a_corrupt_member_is_reported_and_the_rest_go_on():
    data = bytearray(
        zip_of([("bad.png", png(value=1)), ("good.png", png(value=2))], compression=0)
    )
    offset = data.index(png(value=1)) + 60
    data[offset] ^= 0xFF  # breaks the CRC of the first member only
    members, _ = read(bytes(data))
    assert "corrupt in the zip" in errors(members)["bad.png"]
    assert [m.name for m in members if m.content] == ["good.png"]


def test_an_encrypted_member_is_refused():
    data = bytearray(zip_of([("secret.png", png())], compression=0))
    # Set the "encrypted" flag in the local header and the central directory entry.
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + flag_offset
        data[at] |= 0x1
    members, _ = read(bytes(data))
    assert "password" in errors(members)["secret.png"]


def test_operating_system_clutter_is_skipped():
    members, report = read(
        zip_of([("__MACOSX/._a.png", b"x"), (".DS_Store", b"x"), ("a.png", png())])
    )
    assert [m.name for m in members] == ["a.png"] and report.files == 1


def test_an_empty_zip_has_no_files_and_no_errors():
    members, report = read(zip_of([]))
    assert members == [] and report.files == 0 and not report.errors


def test_garbage_after_a_zip_signature_is_not_a_readable_zip():
    members, report = read(b"PK\x03\x04" + b"\0" * 100)
    assert members == [] and "not a readable zip" in report.errors[0]


def test_archive_kinds_are_sniffed_from_content():
    assert is_zip(zip_of([("a.png", png())])) and is_zip(zip_of([]))
    assert not is_zip(png())
    assert other_archive_kind(b"\x1f\x8b\x08\x00rest") == "a gzip file"
    assert other_archive_kind(b"Rar!\x1a\x07\x00") == "a RAR archive"
    assert other_archive_kind(png()) is None
