"""The download stage against a PhysioNet-layout mirror on 127.0.0.1 and against local copies."""

from __future__ import annotations

import hashlib

import pytest

from ecg.config import DownloadConfig
from ecg.databases.download import fetch_database
from ecg.databases.network import RetryPolicy
from ecg.databases.sources import HttpSource, LocalSource
from ecg.errors import EcgError, SourceUnreachable, VerificationError

FAST = RetryPolicy(connect_timeout_s=2, read_timeout_s=5, retries=2, backoff_s=0)


def _download(mirror, cache, database="mitdb", version="fixtures", records=()):
    cfg = DownloadConfig(database=database, version=version, records=tuple(records))
    return fetch_database(cfg, HttpSource(mirror.url, database, version, FAST), cache)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_fetch_verifies_every_file_by_sha256(mirror, fixtures, tmp_path):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    cache = tmp_path / "cache"
    result = _download(mirror, cache)
    assert [r.name for r in result.records] == sorted(
        (fixtures / "mitdb" / "RECORDS").read_text().split()
    )
    assert result.fetched_files == 36
    assert result.verified_by == {"SHA-256 (SHA256SUMS.txt)": 36}
    for rel in ("208.dat", "208.atr", "208.hea"):
        assert _sha(cache / rel) == _sha(fixtures / "mitdb" / rel)
    assert not list(cache.rglob("*.part"))


def test_second_fetch_downloads_nothing(mirror, fixtures, tmp_path):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    cache = tmp_path / "cache"
    _download(mirror, cache)
    mirror.requests.clear()
    again = _download(mirror, cache)
    assert again.fetched_files == 0
    assert again.already_verified == 36
    fetched = {path.rsplit("/", 1)[1] for path, _ in mirror.requests}
    assert fetched == {"RECORDS", "SHA256SUMS.txt"}


def test_corrupted_file_is_caught_by_sha256_and_not_kept(mirror, fixtures, tmp_path):
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    good = _sha(folder / "208.dat")
    data = bytearray((folder / "208.dat").read_bytes())
    data[1000] ^= 0xFF
    (folder / "208.dat").write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(VerificationError) as err:
        _download(mirror, cache)
    message = str(err.value)
    assert "208.dat" in message and good in message and bad in message
    assert not (cache / "208.dat").exists()
    assert not (cache / "208.dat.part").exists()


def test_a_file_dropped_halfway_is_resumed_with_a_range_request(mirror, fixtures, tmp_path):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    mirror.drop_once.add("/mitdb/fixtures/213.dat")
    cache = tmp_path / "cache"
    _download(mirror, cache, records=["213"])
    gets = [(p, r) for p, r in mirror.requests if p.endswith("213.dat")]
    assert len(gets) == 2
    assert gets[0][1] is None and gets[1][1].startswith("bytes=")
    assert _sha(cache / "213.dat") == _sha(fixtures / "mitdb" / "213.dat")


def test_a_file_dropped_halfway_is_refetched_when_the_server_ignores_ranges(
    mirror, fixtures, tmp_path
):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    mirror.ranges = False
    mirror.drop_once.add("/mitdb/fixtures/213.dat")
    cache = tmp_path / "cache"
    _download(mirror, cache, records=["213"])
    assert len(mirror.fetched("213.dat")) == 2
    assert _sha(cache / "213.dat") == _sha(fixtures / "mitdb" / "213.dat")


def test_a_partial_file_in_the_cache_is_never_trusted(mirror, fixtures, tmp_path):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    cache = tmp_path / "cache"
    cache.mkdir()
    full = (fixtures / "mitdb" / "100.dat").read_bytes()
    (cache / "100.dat").write_bytes(full[: len(full) // 3])  # left by a killed copy
    (cache / "100.hea.part").write_bytes(b"garbage")  # left by a killed download
    result = _download(mirror, cache, records=["100"])
    assert _sha(cache / "100.dat") == _sha(fixtures / "mitdb" / "100.dat")
    assert _sha(cache / "100.hea") == _sha(fixtures / "mitdb" / "100.hea")
    assert result.fetched_files == 3


def test_records_line_leaving_the_cache_is_refused(mirror, fixtures, tmp_path):
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    (folder / "RECORDS").write_text("100\n../../evil\n")
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(EcgError, match=r"refusing name '\.\./\.\./evil'"):
        _download(mirror, cache)
    assert not (tmp_path / "evil.hea").exists()
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("name", ["/etc/passwd", "a/../../b", "x\\..\\y", "ok/./no"])
def test_unsafe_record_names_are_refused(mirror, fixtures, tmp_path, name):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    with pytest.raises(EcgError, match="refusing name"):
        _download(mirror, tmp_path / "cache", records=[name])


def test_server_down_gives_one_clear_message_and_writes_nothing(closed_port_url, tmp_path):
    cfg = DownloadConfig(database="mitdb", version="1.0.0", mirror=closed_port_url)
    source = HttpSource(closed_port_url, "mitdb", "1.0.0", FAST)
    cache = tmp_path / "raw" / "mitdb" / "1.0.0"
    with pytest.raises(SourceUnreachable) as err:
        fetch_database(cfg, source, cache)
    message = str(err.value)
    assert "could not reach the mirror" in message
    assert "--source DIR" in message and "--mirror URL" in message
    assert "Connection refused" in message
    assert not cache.exists()


def test_physionet_is_named_when_it_is_the_source_that_is_down(closed_port_url, monkeypatch):
    import ecg.databases.sources as sources

    monkeypatch.setattr(sources, "PHYSIONET_FILES_URL", closed_port_url)
    source = HttpSource(closed_port_url, "mitdb", "1.0.0", FAST)
    assert source.description.startswith("PhysioNet")


def test_without_sha256sums_files_are_verified_by_header_and_size(mirror, fixtures, tmp_path):
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    (folder / "SHA256SUMS.txt").unlink()
    cache = tmp_path / "cache"
    result = _download(mirror, cache, records=["100", "208"])
    assert result.verified_by == {
        "readable header": 2,
        "size from header": 2,
        "readable annotations": 2,
    }


def test_without_sha256sums_a_truncated_signal_file_is_caught_by_its_size(
    mirror, fixtures, tmp_path
):
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    (folder / "SHA256SUMS.txt").unlink()
    data = (folder / "208.dat").read_bytes()
    (folder / "208.dat").write_bytes(data[:-300])
    cache = tmp_path / "cache"
    expected = r"208\.dat: 129300 bytes, but its header implies 129600"
    with pytest.raises(VerificationError, match=expected):
        _download(mirror, cache, records=["208"])
    assert not (cache / "208.dat").exists()


def test_missing_frank_lead_files_are_not_an_error(mirror, fixtures, tmp_path):
    mirror.publish(fixtures / "ptbdb", "ptbdb", "fixtures")
    result = _download(mirror, tmp_path / "cache", database="ptbdb")
    assert len(result.records) == 4
    assert all(r.missing_optional == [f"{r.name}.xyz"] for r in result.records)
    assert {rel for r in result.records for rel in r.files} >= {
        "patient001/s0010_re.hea",
        "patient001/s0010_re.dat",
    }


def test_a_missing_required_file_names_it(mirror, fixtures, tmp_path):
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    (folder / "232.atr").unlink()
    with pytest.raises(EcgError, match=r"has no file 232\.atr"):
        _download(mirror, tmp_path / "cache", records=["232"])


def test_local_copy_is_verified_like_a_download(fixtures, tmp_path):
    cfg = DownloadConfig(database="mitdb", version="fixtures")
    cache = tmp_path / "cache"
    result = fetch_database(cfg, LocalSource(fixtures / "mitdb"), cache)
    assert result.fetched_files == 36
    assert result.verified_by == {"SHA-256 (SHA256SUMS.txt)": 36}
    again = fetch_database(cfg, LocalSource(fixtures / "mitdb"), cache)
    assert again.fetched_files == 0 and again.already_verified == 36


def test_local_copy_without_records_file_lists_its_headers(fixtures, tmp_path):
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(fixtures / "ptbdb", copy)
    (copy / "RECORDS").unlink()
    cfg = DownloadConfig(database="ptbdb", version="fixtures")
    result = fetch_database(cfg, LocalSource(copy), tmp_path / "cache")
    assert [r.name for r in result.records] == [
        "patient001/s0010_re",
        "patient002/s0015lre",
        "patient104/s0306lre",
        "patient105/s0303lre",
    ]


def test_pinned_hash_beats_a_lying_sha256sums(mirror, fixtures, tmp_path):
    """A mirror cannot vouch for a changed file by changing SHA256SUMS.txt: pins win."""
    folder = mirror.publish(fixtures / "mitdb", "mitdb", "1.0.0")
    (folder / "RECORDS").write_text("100\n")
    sums = (folder / "SHA256SUMS.txt").read_text()
    (folder / "SHA256SUMS.txt").write_text(sums)  # the fixture's hashes, not PhysioNet's
    with pytest.raises(VerificationError, match="pinned in this project"):
        _download(mirror, tmp_path / "cache", version="1.0.0", records=["100"])


def test_a_verified_cache_is_used_when_the_source_is_unreachable(
    mirror, fixtures, closed_port_url, tmp_path
):
    mirror.publish(fixtures / "mitdb", "mitdb", "fixtures")
    cache = tmp_path / "cache"
    _download(mirror, cache)
    cfg = DownloadConfig(database="mitdb", version="fixtures")
    offline = HttpSource(closed_port_url, "mitdb", "fixtures", FAST)
    result = fetch_database(cfg, offline, cache)
    assert result.already_verified == 36 and result.fetched_files == 0
    (cache / "100.dat").unlink()
    with pytest.raises(SourceUnreachable, match=r"100\.dat is not in the cache, and could not"):
        fetch_database(cfg, offline, cache)
