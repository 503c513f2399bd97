"""The model registry page (/models/): cards, lineage and comparison reports; promote,
the second administrator's confirmation, roll back, shadow; and a shadow result is never
shown as the result (pages, API, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import TEST_MODEL_VERSION
from tests.portal.registry.test_model_versions import model_folder
from tests.portal.review.conftest import analysed_scan

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def models_dir(settings: Any, tmp_path: Path) -> Path:
    settings.ML_MODELS_DIR = tmp_path / "models"
    return settings.ML_MODELS_DIR


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admins(make_user: Any) -> tuple[Any, Any]:
    return make_user("administrator", "admin-one"), make_user(
        "administrator", "admin-two"
    )


def _install(tmp_path: Path, seed: str, admin: Any, worse: tuple[str, ...] = ()):
    from portal.registry.services import model_version_install

    folder = model_folder(tmp_path / "made", seed, worse=worse)
    return model_version_install(source=folder, installed_by=admin)


def _messages(response: Any) -> str:
    return " ".join(str(m) for m in response.context["messages"])


def test_the_page_shows_each_versions_card_lineage_and_verdicts(tmp_path, admins):
    record = _install(tmp_path, "p", admins[0], worse=("ece",))

    page = _client(admins[0]).get(reverse("review:models"))

    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-version="{record.version}"' in html
    assert f'data-version="{TEST_MODEL_VERSION}"' in html  # the shipped one
    assert 'id="active-model">' + TEST_MODEL_VERSION in html
    assert "Fine-tuned from</th><td>" + TEST_MODEL_VERSION in html
    assert html.count('class="verdict-worse"') == 1
    assert html.count('class="verdict-not-worse"') == 2
    assert "worse on site:site-export: ece" in html
    assert "Ask a second administrator to promote" in html


def _writes_while(action: Any) -> list[str]:
    """The SQL statements that change rows, run while `action()` runs (but the
    session's: the idle timeout notes the time of every request in it)."""
    from django.db import connection

    writes: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        verb = sql.lstrip().split(" ", 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE") and '"django_session"' not in sql:
            writes.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        action()
    return writes


def test_reading_the_page_writes_nothing(admins):
    """Before anything was installed or promoted, the shipped model is not recorded:
    the page shows it from its folder and records nothing (a GET changes no row)."""
    from portal.registry.models import ModelVersion

    client = _client(admins[0])
    pages: list[Any] = []

    writes = _writes_while(lambda: pages.append(client.get(reverse("review:models"))))

    assert writes == []
    assert not ModelVersion.objects.exists()
    html = pages[0].content.decode()
    assert pages[0].status_code == 200
    assert f'data-version="{TEST_MODEL_VERSION}"' in html
    assert "Not recorded yet" in html
    assert 'id="active-model">' + TEST_MODEL_VERSION in html


def test_the_shipped_model_is_recorded_at_deploy_by_a_command(admins):
    from django.core.management import call_command

    from portal.registry.models import ModelVersion

    call_command("register_shipped_model")
    call_command("register_shipped_model")  # again at the next deploy: no change

    shipped = ModelVersion.objects.get()
    assert (shipped.version, shipped.source) == (TEST_MODEL_VERSION, "shipped")
    page = _client(admins[0]).get(reverse("review:models")).content.decode()
    assert "Not recorded yet" not in page


def test_promoting_from_the_page_needs_a_reason(tmp_path, admins):
    from portal.registry.selectors import model_version_active

    record = _install(tmp_path, "q", admins[0])
    client = _client(admins[0])
    url = reverse("review:model_promote", args=[record.pk])

    refused = client.post(url, {"reason": ""}, follow=True)
    assert "Give a reason" in _messages(refused)
    assert model_version_active() == TEST_MODEL_VERSION

    done = client.post(url, {"reason": "better on our scans"}, follow=True)
    assert f"{record.version} is active" in _messages(done)
    assert model_version_active() == record.version


def test_a_worse_version_is_refused_then_confirmed_by_another_administrator(
    tmp_path, admins
):
    from auditlog.models import LogEntry

    from portal.registry.models import ModelActivation, PromotionRequest
    from portal.registry.selectors import model_version_active

    first, second = admins
    record = _install(tmp_path, "r", first, worse=("recall_malignant",))
    url = reverse("review:model_promote", args=[record.pk])

    refused = _client(first).post(url, {"reason": "trust me"}, follow=True)
    assert "Refused: worse on site:site-export: recall_malignant" in _messages(refused)
    assert model_version_active() == TEST_MODEL_VERSION

    _client(first).post(url, {"reason": "trust me", "request_confirmation": "1"})
    request = PromotionRequest.objects.get()
    confirm = reverse("review:model_promotion_confirm", args=[request.pk])
    assert confirm not in _client(first).get(reverse("review:models")).content.decode()
    assert _client(first).post(confirm).status_code == 403
    assert model_version_active() == TEST_MODEL_VERSION
    assert confirm in _client(second).get(reverse("review:models")).content.decode()

    _client(second).post(confirm)

    assert model_version_active() == record.version
    entry = LogEntry.objects.get_for_object(ModelActivation.objects.get()).get()
    assert entry.actor == second  # the change log names who confirmed it
    history = _client(second).get(reverse("review:models")).content.decode()
    assert "over: worse on site:site-export: recall_malignant" in history


def test_rolling_back_from_the_page(tmp_path, admins):
    from portal.registry.selectors import model_version_active
    from portal.registry.services import model_promote

    record = _install(tmp_path, "s", admins[0])
    model_promote(model_version=record, user=admins[0], reason="go")

    _client(admins[1]).post(reverse("review:model_rollback"), {"reason": "undo"})

    assert model_version_active() == TEST_MODEL_VERSION


def test_a_shadow_result_is_shown_on_the_registry_page_only(
    tmp_path, admins, study, user, make_user
):
    from portal.analyses.models import ShadowResult
    from portal.registry.services import model_shadow_set
    from portal.review.services import review_save

    record = _install(tmp_path, "t", admins[0])
    scan = analysed_scan(
        study,
        user,
        probabilities={"normal": 0.1, "benign": 0.2, "malignant": 0.7},
    )
    analysis = scan.analyses.get()
    review_save(
        analysis=analysis,
        author=make_user("radiologist", "reader"),
        agrees_with_model=True,
        label="",
        birads="5",
        sign=True,
    )
    # A distinctive shadow verdict: "normal" at 0.9173 would read "91.7%" on a page.
    ShadowResult.objects.create(
        analysis=analysis,
        model_version=record.version,
        label="normal",
        probabilities={"normal": 0.9173, "benign": 0.0531, "malignant": 0.0296},
        logits=[2.0, -0.5, -1.2],
        lesion_area_fraction=0.4321,
        mask_dice=0.25,
    )
    model_shadow_set(model_version=record, user=admins[0], reason="watch")

    reader = _client(make_user("radiologist", "reader-2"))
    shown = [
        reader.get(reverse("review:scan_review", args=[scan.pk])),
        reader.get(reverse("clinical:study_detail", args=[study.pk])),
        reader.get(reverse("clinical:study_status", args=[study.pk])),
        reader.get(reverse("api:analysis-detail", args=[analysis.pk])),
        reader.get(reverse("api:study-detail", args=[study.pk])),
        reader.get(reverse("review:dashboard")),
    ]
    for response in shown:
        assert response.status_code == 200, response
        body = response.content.decode()
        for marker in ("91.7", "0.9173", "0.4321", "0.0296", record.version):
            assert marker not in body, (response.request["PATH_INFO"], marker)
    assert (
        reader.get(reverse("api:analysis-detail", args=[analysis.pk])).json()["label"]
        == "malignant"
    )

    page = _client(admins[0]).get(reverse("review:models")).content.decode()
    assert 'id="shadow-model">' + record.version in page
    agreement = page.split('id="shadow-agreement"')[1].split("</table>")[0]
    # One scan compared: the shadow said normal, the result shown malignant, the
    # reader signed malignant.
    assert '<td class="num">1' in agreement
    assert "0.0%" in agreement  # same label as the result shown
    assert "0.250" in agreement  # outline Dice
    assert "100.0% / 0.0%" in agreement  # label as signed: active / shadow


# --- installing through the page ---------------------------------------------------


def _zipped(folder: Path, *, inside: str = "", extra: dict[str, bytes] | None = None):
    """The folder as an administrator zips it: its files at the top (or in `inside`/),
    with `extra` members besides."""
    import io
    import zipfile

    from django.core.files.uploadedfile import SimpleUploadedFile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.iterdir()):
            bundle.write(path, f"{inside}{path.name}")
        for name, data in (extra or {}).items():
            bundle.writestr(name, data)
    return SimpleUploadedFile(
        "model.zip", buffer.getvalue(), content_type="application/zip"
    )


def _upload(client: Client, archive: Any) -> Any:
    return client.post(
        reverse("review:model_upload"), {"archive": archive}, follow=True
    )


def test_an_administrator_installs_a_zipped_model_folder_and_it_is_audited(
    tmp_path, admins, models_dir
):
    from auditlog.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    from portal.registry.models import ModelVersion
    from portal.registry.selectors import model_version_active

    folder = model_folder(tmp_path / "made", "u")
    archive = _zipped(
        folder,
        inside="out-u/",
        extra={"out-u/notes.txt": b"not a model file", "../../escape.npz": b"x"},
    )
    page = _upload(_client(admins[0]), archive)

    record = ModelVersion.objects.get(source="installed")
    said = _messages(page)
    assert f"{record.version} is installed, not active." in said
    assert "Left out of the archive: ../../escape.npz, out-u/notes.txt." in said
    assert f'data-version="{record.version}"' in page.content.decode()
    assert record.installed_by == admins[0]
    assert record.comparison["candidate"] == record.version
    # The bytes installed are the folder's; nothing else was written anywhere.
    installed = models_dir / record.version
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        p.name for p in folder.iterdir()
    )
    for path in folder.iterdir():
        assert (installed / path.name).read_bytes() == path.read_bytes()
    assert not (tmp_path / "escape.npz").exists()
    assert not list(models_dir.glob(".installing-*"))
    assert model_version_active() == TEST_MODEL_VERSION  # installed, not active
    entry = LogEntry.objects.get(
        content_type=ContentType.objects.get_for_model(ModelVersion),
        object_pk=str(record.pk),
    )
    assert entry.actor == admins[0] and entry.action == LogEntry.Action.CREATE


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        ("not a zip", "not a readable zip archive"),
        ("no weights", "no weights.npz in the archive"),
        ("other bytes", "weights.npz does not match the sha256 in model.json"),
        ("too large", "the model's files are larger than"),
        ("archive too large", "The archive is larger than 300 bytes."),
        ("twice", "holds model.json twice"),
    ],
)
def test_a_bad_archive_is_refused_with_its_reason_and_installs_nothing(
    tmp_path, admins, models_dir, settings, archive, reason
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from portal.registry.models import ModelVersion

    folder = model_folder(tmp_path / "made", "v")
    if archive == "not a zip":
        upload = SimpleUploadedFile("model.zip", b"PK\x03\x04 but no archive")
    elif archive == "no weights":
        (folder / "weights.npz").unlink()
        upload = _zipped(folder)
    elif archive == "other bytes":  # weights that are not the version model.json names
        (folder / "weights.npz").write_bytes(b"other weights")
        upload = _zipped(folder)
    elif archive == "too large":  # an archive within the limit, its files beyond it
        upload = _zipped(folder)
        settings.MODEL_UPLOAD_MAX_BYTES = upload.size + 1
        assert sum(p.stat().st_size for p in folder.iterdir()) > upload.size + 1
    elif archive == "archive too large":  # refused before it is opened
        settings.MODEL_UPLOAD_MAX_BYTES = 300
        upload = SimpleUploadedFile("model.zip", b"x" * 301)
    else:
        upload = _zipped(
            folder, extra={"copy/model.json": (folder / "model.json").read_bytes()}
        )
    page = _upload(_client(admins[0]), upload)

    assert page.status_code == 200
    assert reason in _messages(page)
    assert not ModelVersion.objects.filter(source="installed").exists()
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_only_administrators_install_through_the_page(tmp_path, make_user):
    from portal.registry.models import ModelVersion

    folder = model_folder(tmp_path / "made", "w")
    for role in ("radiologist", "staff", None):
        response = _client(make_user(role, f"user-{role}")).post(
            reverse("review:model_upload"), {"archive": _zipped(folder)}
        )
        assert response.status_code in (302, 403), role
        if response.status_code == 302:
            assert "/login" in response["Location"], role
    assert not ModelVersion.objects.filter(source="installed").exists()
