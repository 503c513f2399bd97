"""The hostile corpus through the REST API upload and the import_scans command."""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from tests.hostile.checks import check_outcome, check_storage
from tests.hostile.corpus import ACCEPT, REJECT, build, good_png

pytestmark = pytest.mark.django_db
CORPUS = build()
NAME_MAX = 200  # bytes a test may use for one file name on any file system


@pytest.fixture
def token_client(client: Any, user: Any) -> Any:
    from portal.accounts.tokens import token_issue

    cache.clear()  # upload throttles count per user in the cache
    _, key = token_issue(user=user)
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {key}"
    yield client
    cache.clear()


def _api_upload(client: Any, study: Any, files: list[tuple[str, bytes]]) -> Any:
    return client.post(
        reverse("api:study-scans", args=[study.pk]),
        {"files": [SimpleUploadedFile(name, content) for name, content in files]},
    )


@pytest.mark.parametrize("item", CORPUS, ids=lambda item: item.kind)
def test_the_api_accepts_or_refuses_each_file_with_a_reason(
    item, token_client, study, media_root
):
    response = _api_upload(token_client, study, [(item.filename, item.content)])

    assert response.status_code in (200, 201, 422), response.content[:500]
    body = response.json()
    accepted = [row["filename"] for row in body["accepted"]]
    reasons = [row["error"] for row in body["rejected"]]
    check_outcome(item, accepted, reasons)
    check_storage(media_root)


def test_the_api_takes_the_good_files_sent_with_the_whole_corpus(
    token_client, study, media_root
):
    good = [("good-one.png", good_png(131, 97)), ("good-two.png", good_png(120, 91))]
    files = [(item.filename, item.content) for item in CORPUS] + good

    response = _api_upload(token_client, study, files)

    assert response.status_code == 201
    accepted = {row["filename"] for row in response.json()["accepted"]}
    assert {"good-one.png", "good-two.png"} <= accepted
    check_storage(media_root)


def _file_name(item_filename: str) -> str:
    name = Path(item_filename).name or "unnamed"
    while len(name.encode()) > NAME_MAX:
        name = name[:-5] + name[-4:]  # shorten, keep the extension
    return name


def test_import_scans_reports_each_hostile_file_and_imports_the_good_ones(
    tmp_path, study, user, media_root
):
    folder = tmp_path / "incoming"
    expected: dict[str, Any] = {}
    for index, item in enumerate(CORPUS):
        # One folder per item: names repeat across the corpus.
        path = folder / f"{index:02d}-{item.kind}" / _file_name(item.filename)
        path.parent.mkdir(parents=True)
        path.write_bytes(item.content)
        expected[path.relative_to(folder).as_posix()] = item
    (folder / "good").mkdir()
    (folder / "good" / "good-one.png").write_bytes(good_png(131, 97))
    os.symlink("/etc/passwd", folder / "good" / "passwd.png")
    out = StringIO()

    call_command(
        "import_scans",
        str(folder),
        "--study",
        str(study.pk),
        "--user",
        user.username,
        "--no-progress",
        "--verbosity",
        "2",
        stdout=out,
    )

    lines = out.getvalue().splitlines()
    rejected = {
        line.split(None, 1)[1].split(": ", 1)[0]: line.split(": ", 1)[1]
        for line in lines
        if line.startswith("rejected")
    }
    accepted = {line.split()[1] for line in lines if line.startswith("accepted")}
    assert "good/good-one.png" in accepted
    assert "links are not followed" in rejected["good/passwd.png"]
    for name, item in expected.items():
        if item.expect == REJECT:
            assert name in rejected, f"{item}: not reported ({name})"
            reason = rejected[name].lower()
            assert any(fragment in reason for fragment in item.reasons), (
                f"{item}: {reason}"
            )
        elif item.expect == ACCEPT:
            assert name not in rejected, f"{item}: {rejected.get(name)}"
        else:
            archive_lines = [r for n, r in rejected.items() if n.startswith(name)]
            assert archive_lines, f"{item}: nothing reported for the archive"
    check_storage(media_root)
