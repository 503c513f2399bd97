from __future__ import annotations

from django.urls import reverse

from portal.review.services import review_save

from .pdftext import image_draws, page_count, pdf_text


def test_the_report_opens_and_says_what_it_must(
    client, radiologist, study, user, make_analysed_scan
):
    first = make_analysed_scan(study, user, filename="left-breast.png")
    make_analysed_scan(
        study,
        user,
        filename="right-breast.png",
        probabilities={"normal": 0.7, "benign": 0.2, "malignant": 0.1},
    )
    review_save(
        analysis=first.analyses.get(),
        author=radiologist,
        agrees_with_model=False,
        label="benign",
        birads="3",
        note="Oval circumscribed mass",
        sign=True,
    )
    client.force_login(radiologist)
    response = client.get(reverse("review:study_report", args=[study.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    disposition = response["Content-Disposition"]
    assert f"study-{study.pk}-report.pdf" in disposition
    assert "Jane" not in disposition and "H-0001" not in disposition
    content = response.content
    assert page_count(content) >= 1
    text = pdf_text(content)
    for expected in (
        "Breast ultrasound study report",
        "decision support, not a diagnosis",
        "Jane Example",
        "H-0001",
        "ACC1",
        "left-breast.png",
        "right-breast.png",
        "test-model-1",
        "malignant (confidence 70.0%)",
        "benign (corrected label)",
        "3 – probably benign",
        "Oval circumscribed mass",
        "Signed by",
        "dr-reader at",
        "not yet reviewed and signed",
        "Lesion outline",
        "Grad-CAM",
        "Seg-Grad-CAM",
    ):
        assert expected.replace("–", "\x96") in text or expected in text, expected
    # Four images (scan, outline, two heatmaps) per scan are embedded.
    assert image_draws(content) == 8


def test_staff_can_download_the_report_but_not_without_a_role(
    client, user, study, make_user
):
    client.force_login(user)
    assert (
        client.get(reverse("review:study_report", args=[study.pk])).status_code == 200
    )
    client.force_login(make_user(None))
    assert (
        client.get(reverse("review:study_report", args=[study.pk])).status_code == 403
    )


def test_a_long_signed_note_is_wrapped_across_pages_not_a_500(
    client, radiologist, study, user, make_analysed_scan
):
    """A 5,000-character note (one more line than a page holds) used to raise
    reportlab's LayoutError: the note sat in one table cell, which cannot split."""
    scan = make_analysed_scan(study, user, filename="left-breast.png")
    words = [f"w{index:04d}" for index in range(840)]  # 840 x 6 = 5,040 characters
    note = " ".join(words) + "\n" + "end-of-note"
    assert len(note) >= 5000
    review_save(
        analysis=scan.analyses.get(),
        author=radiologist,
        agrees_with_model=True,
        label="malignant",
        birads="5",
        note=note,
        sign=True,
    )
    client.force_login(radiologist)
    response = client.get(reverse("review:study_report", args=[study.pk]))

    assert response.status_code == 200
    text = pdf_text(response.content)
    # Every word of the note is in the report, first to last.
    for word in (words[0], words[400], words[-1], "end-of-note"):
        assert word in text, word
    assert page_count(response.content) >= 2
