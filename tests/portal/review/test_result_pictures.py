"""Pictures drawn on demand from the stored results, and the scan's display copy."""

from __future__ import annotations

import io

import numpy as np
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image

from ml.render import OUTLINE_COLOUR
from tests.results import model_result


def _image(response) -> np.ndarray:
    content = b"".join(response.streaming_content)
    with Image.open(io.BytesIO(content)) as image:
        return np.asarray(image.convert("RGB"))


def test_the_outline_picture_is_drawn_on_the_full_scan_and_then_kept(
    client, radiologist, scan, analysis, monkeypatch
):
    assert not analysis.overlay
    client.force_login(radiologist)
    url = reverse("analyses:artifact", args=[analysis.pk, "overlay"])
    pixels = _image(client.get(url))
    assert pixels.shape == (scan.height, scan.width, 3)
    # The boundary of the 20 x 20 mask at (20..40, 10..30) is yellow, the rest the scan.
    assert tuple(pixels[10, 25]) == tuple(OUTLINE_COLOUR)
    assert tuple(pixels[20, 30]) == (90, 90, 90)
    analysis.refresh_from_db()
    assert analysis.overlay.name == f"analyses/{analysis.pk}/overlay.png"

    # Kept: the next download decodes nothing.
    monkeypatch.setattr(
        "portal.analyses.composites.decode_image",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")),
    )
    assert (_image(client.get(url)) == pixels).all()


def test_a_heatmap_picture_is_coloured_where_the_map_is_hot(
    client, radiologist, scan, analysis
):
    client.force_login(radiologist)
    pixels = _image(
        client.get(reverse("analyses:artifact", args=[analysis.pk, "gradcam"]))
    ).astype(int)
    # The map is hot at rows 4..8, columns 5..10 of 16: red there, the scan elsewhere.
    hot = pixels[int(6 / 16 * scan.height), int(7.5 / 16 * scan.width)]
    assert hot[0] > 150 and hot[2] < 60
    assert tuple(pixels[scan.height - 2, 2]) == (90, 90, 90)


def test_the_grey_maps_download_as_they_were_stored(client, radiologist, analysis):
    client.force_login(radiologist)
    for kind in ("gradcam_map", "seg_gradcam_map", "mask"):
        response = client.get(reverse("analyses:artifact", args=[analysis.pk, kind]))
        assert response.status_code == 200
        with default_storage.open(getattr(analysis, kind).name, "rb") as stored:
            assert b"".join(response.streaming_content) == stored.read()


def test_an_older_analysis_serves_the_pictures_its_worker_stored(
    client, radiologist, study, user, make_analysed_scan
):
    analysis = make_analysed_scan(study, user, legacy=True).analyses.get()
    client.force_login(radiologist)
    for kind in ("overlay", "gradcam", "seg_gradcam"):
        response = client.get(reverse("analyses:artifact", args=[analysis.pk, kind]))
        with default_storage.open(getattr(analysis, kind).name, "rb") as stored:
            assert b"".join(response.streaming_content) == stored.read()
    for kind in ("gradcam_map", "seg_gradcam_map"):
        response = client.get(reverse("analyses:artifact", args=[analysis.pk, kind]))
        assert response.status_code == 404


def test_a_new_result_forgets_the_pictures_of_the_old_one(
    client, radiologist, analysis
):
    from ml.render import heatmap_png, mask_png
    from portal.analyses import services
    from portal.analyses.models import Analysis

    client.force_login(radiologist)
    client.get(reverse("analyses:artifact", args=[analysis.pk, "overlay"]))
    analysis.refresh_from_db()
    old_overlay = analysis.overlay.name
    assert default_storage.exists(old_overlay)
    Analysis.objects.filter(pk=analysis.pk).update(status="running")
    services.analysis_record_success(
        analysis_id=analysis.pk,
        result=model_result(),
        artifacts={
            "mask": mask_png(np.zeros((48, 64), bool)),
            "gradcam_map": heatmap_png(np.zeros((8, 8), np.float32)),
            "seg_gradcam_map": heatmap_png(np.zeros((8, 8), np.float32)),
        },
    )
    analysis.refresh_from_db()
    assert not analysis.overlay and not default_storage.exists(old_overlay)
    pixels = _image(
        client.get(reverse("analyses:artifact", args=[analysis.pk, "overlay"]))
    )
    assert (pixels == 90).all()  # an empty mask draws no outline


def test_the_display_copy_is_served_without_the_original(client, radiologist, scan):
    default_storage.delete(scan.original.name)
    client.force_login(radiologist)
    response = client.get(reverse("review:scan_display", args=[scan.pk]))
    assert response.status_code == 200
    assert _image(response).shape == (scan.height, scan.width, 3)


def test_a_scan_stored_before_display_copies_gets_one_once(
    client, radiologist, study, user, make_analysed_scan
):
    scan = make_analysed_scan(study, user, legacy=True)
    assert not scan.display
    client.force_login(radiologist)
    url = reverse("review:scan_display", args=[scan.pk])
    assert _image(client.get(url)).shape == (scan.height, scan.width, 3)
    scan.refresh_from_db()
    assert scan.display.name.endswith("-display.png")
    default_storage.delete(scan.original.name)  # from now on the copy is enough
    assert client.get(url).status_code == 200


def test_a_large_scan_is_displayed_at_most_1024_pixels_wide():
    from ml.render import display_png

    pixels = np.zeros((1500, 3000, 3), np.uint8)
    with Image.open(io.BytesIO(display_png(pixels))) as image:
        assert image.size == (1024, 512)
        assert image.mode == "L"  # grey scans stored as one channel


def test_uploads_store_their_display_copy(client, user, study):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from portal.clinical.models import Scan

    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), (10, 20, 30), np.uint8)).save(buffer, "PNG")
    client.force_login(user)
    client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": [SimpleUploadedFile("colour.png", buffer.getvalue())]},
    )
    scan = Scan.objects.get(study=study)
    with default_storage.open(scan.display.name, "rb") as stored:
        pixels = np.asarray(Image.open(stored).convert("RGB"))
    assert pixels.shape == (40, 50, 3) and tuple(pixels[0, 0]) == (10, 20, 30)


def test_the_admin_links_each_result_file_through_the_authorised_view(
    client, analysis, django_user_model
):
    admin = django_user_model.objects.create_superuser("root", password="x" * 20)
    client.force_login(admin)
    page = client.get(
        reverse("admin:analyses_analysis_change", args=[analysis.pk])
    ).content.decode()
    for kind in ("mask", "overlay", "gradcam", "seg_gradcam", "gradcam_map"):
        assert reverse("analyses:artifact", args=[analysis.pk, kind]) in page, kind
    assert "/media/" not in page
    overlay = client.get(reverse("analyses:artifact", args=[analysis.pk, "overlay"]))
    assert overlay.status_code == 200
