"""The one module that talks to the network.

We fetch files ourselves with ``requests`` rather than through ``wfdb.dl_database``: wfdb looks up
the database version on a hard-coded physionet.org page (so it cannot use a mirror) and its HTTP
session has no timeout (a server that accepts and never answers blocks it forever). Here every
request has a connect and a read timeout, transient failures are retried with exponential backoff,
and a file arrives in a ``.part`` file that is resumed with an HTTP Range request when the server
supports it, or fetched again from the start when it does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from ecg import __version__
from ecg.errors import EcgError, SourceUnreachable, first_line

_CHUNK = 1 << 14
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5

    def delays(self):
        """Seconds to wait before each retry: backoff, 2x backoff, 4x backoff, ..."""
        return [self.backoff_s * 2**i for i in range(self.retries)]


class _Transient(Exception):
    """A failure worth retrying: a dropped connection, a timeout, a 5xx, a short body."""


class HttpClient:
    def __init__(self, policy: RetryPolicy, session: requests.Session | None = None):
        self.policy = policy
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"ecg/{__version__} (python-requests)"

    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.policy.connect_timeout_s, self.policy.read_timeout_s)

    def get_text(self, url: str) -> str | None:
        """The body of ``url`` as text, or None when the server says it does not exist (404)."""

        def attempt() -> str | None:
            response = self._get(url)
            with response:
                if response.status_code == 404:
                    return None
                self._raise_for_status(url, response)
                return response.text

        return self._with_retries(url, attempt)

    def download(self, url: str, part: Path, on_bytes: Callable[[int], None]) -> bool:
        """Fetch ``url`` into ``part``, resuming what is already there; False if it is absent.

        ``part`` is complete when this returns True: its length equals what the server announced.
        Whether its content is right is for the caller to verify.
        """

        def attempt() -> bool:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            response = self._get(url, headers=headers, stream=True)
            with response:
                if response.status_code == 404:
                    return False
                if response.status_code == 416:  # our partial file is no prefix of theirs
                    part.unlink(missing_ok=True)
                    raise _Transient("range not satisfiable; starting over")
                self._raise_for_status(url, response)
                resumed = response.status_code == 206 and _range_start(response) == have
                if not resumed:
                    have = 0
                length = response.headers.get("Content-Length")
                expected = have + int(length) if length and length.isdigit() else None
                written = have
                with open(part, "ab" if resumed else "wb") as out:
                    try:
                        for chunk in response.iter_content(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                            on_bytes(len(chunk))
                    except requests.RequestException as exc:
                        raise _Transient(
                            f"connection dropped after {written} bytes: {exc}"
                        ) from exc
                if expected is not None and written != expected:
                    raise _Transient(f"got {written} of {expected} bytes")
                return True

        return self._with_retries(url, attempt)

    # ------------------------------------------------------------------ internals

    def _get(self, url: str, **kwargs) -> requests.Response:
        try:
            return self.session.get(url, timeout=self._timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(_reason(exc)) from exc

    @staticmethod
    def _raise_for_status(url: str, response: requests.Response) -> None:
        if response.status_code in _RETRY_STATUS:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise EcgError(f"{url}: HTTP {response.status_code} {response.reason}")

    def _with_retries(self, url: str, attempt):
        last = ""
        for delay in [*self.policy.delays(), None]:
            try:
                return attempt()
            except _Transient as exc:
                last = str(exc)
            if delay is not None:
                time.sleep(delay)
        tries = self.policy.retries + 1
        raise SourceUnreachable(f"{url}: {last} (after {tries} attempt{'s' * (tries > 1)})")


def _range_start(response: requests.Response) -> int | None:
    # Content-Range: bytes 1000-1999/2000
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _reason(exc: Exception) -> str:
    """A one-line cause: 'Connection refused' rather than urllib3's nested repr."""
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "Temporary failure in name resolution",
        "No route to host",
        "Network is unreachable",
    ):
        if marker in text:
            return marker.lower() if marker == "timed out" else marker
    return first_line(exc)
