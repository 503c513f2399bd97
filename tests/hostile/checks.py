"""What every entry point must do with a corpus item, whatever its own response shape."""

from __future__ import annotations

import re
from pathlib import Path

from tests.hostile.corpus import (
    ACCEPT,
    ARCHIVE,
    GENERIC_DECODER_FAILURE,
    NOT_AN_IMAGE,
    REJECT,
    Hostile,
)

STORED_NAME = re.compile(
    # An original under a random id, its display copy and model input beside it, an
    # analysis's outputs.
    r"^(scans/\d+/[0-9a-f-]{36}(\.(png|jpg|bmp|tif|dcm)|-display\.png|-input\.npy)"
    r"|analyses/\d+/[A-Za-z0-9_]+\.png)$"
)
ESCAPE_TARGETS = ("/tmp/pwned.png", "/etc/cron.d/pwned.png", "/etc/cron.d/evil.png")


def check_outcome(item: Hostile, accepted: list[str], rejected: list[str]) -> None:
    """`accepted`: names taken in; `rejected`: the reasons given (one per refused file)."""
    assert all(reason.strip() for reason in rejected), f"{item}: empty reason"
    for reason in rejected:
        # The generic text means a decoder crashed: a bug, even if the file was refused.
        assert GENERIC_DECODER_FAILURE not in reason.lower(), f"{item}: {reason}"
    if item.expect == ACCEPT:
        assert len(accepted) == 1 and not rejected, f"{item}: {accepted} {rejected}"
    elif item.expect == REJECT:
        assert not accepted, f"{item} was accepted"
        assert len(rejected) == 1, f"{item}: {rejected}"
        assert any(fragment in rejected[0].lower() for fragment in item.reasons), (
            f"{item}: reason {rejected[0]!r} does not say {item.reasons}"
        )
    else:
        assert item.expect == ARCHIVE
        assert rejected, f"{item}: nothing refused"
        text = " ".join(rejected).lower()
        # An entry point that takes single images only may refuse the archive whole.
        refused_whole = not accepted and len(rejected) == 1
        allowed = item.reasons + (NOT_AN_IMAGE if refused_whole else ())
        assert any(fragment in text for fragment in allowed), (
            f"{item}: reasons {rejected} do not say {allowed}"
        )
        # Only the innocent members may get in.
        for name in accepted:
            assert "pwned" not in name and "bomb" not in name and "link" not in name


def check_storage(media_root: Path) -> None:
    for path in media_root.rglob("*"):
        if path.is_file():
            name = path.relative_to(media_root).as_posix()
            assert STORED_NAME.match(name), f"unexpected stored name {name}"
    for target in ESCAPE_TARGETS:
        assert not Path(target).exists(), f"{target} was written"
