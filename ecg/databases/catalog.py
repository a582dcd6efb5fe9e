"""What the project knows about each PhysioNet database it supports."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from ecg.errors import EcgError


@dataclass(frozen=True)
class Database:
    name: str
    title: str
    annotators: tuple[str, ...]
    """Annotation files fetched with every record (extensions)."""
    optional_extensions: tuple[str, ...]
    """Signal files a header may name that a copy is allowed to lack."""
    reference: str


DATABASES = {
    "mitdb": Database(
        name="mitdb",
        title="MIT-BIH Arrhythmia Database",
        annotators=("atr",),
        optional_extensions=(),
        reference="Moody GB, Mark RG. The impact of the MIT-BIH Arrhythmia Database. "
        "IEEE Eng in Med and Biol 20(3):45-50 (2001).",
    ),
    "ptbdb": Database(
        name="ptbdb",
        title="PTB Diagnostic ECG Database",
        annotators=(),
        # The three Frank leads live in a separate .xyz file that many copies leave out; the 12
        # standard leads in the .dat are all the pipeline reads.
        optional_extensions=("xyz",),
        reference="Bousseljot R, Kreiseler D, Schnabel A. Nutzung der EKG-Signaldatenbank "
        "CARDIODAT der PTB ueber das Internet. Biomedizinische Technik 40(S1):317 (1995).",
    ),
}


def database(name: str) -> Database:
    try:
        return DATABASES[name]
    except KeyError:
        raise EcgError(f"unknown database '{name}' (supported: {', '.join(DATABASES)})") from None


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (``<hash>  <path>`` or ``<hash> *<path>``) -> {path: hash}."""
    sums = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) == 64 and name:
            sums[name.removeprefix("./")] = digest.lower()
    return sums


def pinned_hashes(name: str, version: str) -> dict[str, str]:
    """PhysioNet's hashes shipped with the project: a copy without SHA256SUMS.txt still verifies."""
    pin = resources.files("ecg.databases") / "pins" / f"{name}-{version}.sha256"
    if not pin.is_file():
        return {}
    return parse_sha256sums(pin.read_text(encoding="utf-8"))
