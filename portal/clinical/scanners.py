"""A scanner model, as the DICOM header names it: what a site calibration may be fitted
for. Two scans belong to the same scanner model when both header values match exactly;
a scan without them (PNG, JPEG, a DICOM file that leaves them empty) is the site's."""

from __future__ import annotations

import json
from dataclasses import dataclass

# DICOM Manufacturer and Manufacturer's Model Name are LO: at most 64 characters.
SCANNER_FIELD_LENGTH = 64


@dataclass(frozen=True)
class Scanner:
    manufacturer: str = ""
    model: str = ""

    @classmethod
    def from_tags(cls, tags: dict[str, str] | None) -> Scanner:
        tags = tags or {}
        return cls(
            manufacturer=tags.get("Manufacturer", "").strip()[:SCANNER_FIELD_LENGTH],
            model=tags.get("ManufacturerModelName", "").strip()[:SCANNER_FIELD_LENGTH],
        )

    @property
    def is_site(self) -> bool:
        """No scanner named: the site as a whole."""
        return not self.manufacturer and not self.model

    @property
    def name(self) -> str:
        if self.is_site:
            return "all scanners"
        return " ".join(p for p in (self.manufacturer, self.model) if p)

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> str:
        """The scanner as one form or query value ("" for the site)."""
        if self.is_site:
            return ""
        return json.dumps([self.manufacturer, self.model], ensure_ascii=False)

    @classmethod
    def from_key(cls, key: str) -> Scanner:
        """The scanner a `key` names; ValueError when it names none."""
        if not key:
            return SITE
        try:
            value = json.loads(key)
        except json.JSONDecodeError:
            raise ValueError("not a scanner model") from None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, str) for v in value)
        ):
            raise ValueError("not a scanner model")
        scanner = cls(
            value[0].strip()[:SCANNER_FIELD_LENGTH],
            value[1].strip()[:SCANNER_FIELD_LENGTH],
        )
        return scanner


SITE = Scanner()
