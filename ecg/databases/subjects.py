"""Who a record belongs to and what they were diagnosed with: what a patient-wise split needs."""

from __future__ import annotations

from pathlib import PurePosixPath

# MIT-BIH records 201 and 202 were taken from the same man (MIT-BIH Arrhythmia Database
# Directory); every other record is its own subject. Records 102, 104, 107 and 217 are paced.
MITDB_SAME_SUBJECT = {"202": "201"}
MITDB_PACED = ("102", "104", "107", "217")


def patient_of(database: str, record: str) -> str:
    """Patient id of a record: the key every split groups by."""
    if database == "mitdb":
        return MITDB_SAME_SUBJECT.get(record, record)
    if database == "ptbdb":
        # PTB records live in one folder per patient: patient001/s0010_re
        return PurePosixPath(record).parts[0]
    raise ValueError(f"no patient rule for database {database!r}")


def ptb_diagnosis(comments: list[str]) -> str | None:
    """The ``Reason for admission:`` of a PTB header; None when it is missing or ``n/a``."""
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep and key.strip().lower() == "reason for admission":
            value = value.strip()
            return None if value.lower() in ("", "n/a") else value
    return None
