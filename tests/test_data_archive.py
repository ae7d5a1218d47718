"""Download (MD5, resume, offline) and safe zip handling (fxbench.data.archive). No network:
the one HTTP function is replaced by a fake server that serves a local file."""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fxbench.data import archive as arc
from fxbench.errors import DataError, OfflineError

API = "https://api.example.invalid/v2/articles/22363012/versions/6"
URL = "https://files.example.invalid/ndownloader/files/1"


class FakeResponse:
    def __init__(self, body: bytes, status: int = 200, fail_after: int | None = None) -> None:
        self._buf = io.BytesIO(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}
        self._fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self._fail_after is not None and self._buf.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        if self._fail_after is not None:
            n = min(n if n > 0 else 1 << 30, self._fail_after - self._buf.tell())
        return self._buf.read(n)

    def getcode(self) -> int:
        return self.status

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class FakeServer:
    """figshare API + file download, honouring Range (or not), failing once on demand."""

    def __init__(self, payload: bytes, md5: str | None, honour_range: bool = True, fail_after: int | None = None) -> None:
        self.payload = payload
        self.md5 = md5
        self.honour_range = honour_range
        self.fail_after = fail_after
        self.ranges: list[str | None] = []

    def __call__(self, request: Any, timeout: float) -> FakeResponse:
        url = request.full_url
        if url == API:
            files = [{"name": "README.txt", "download_url": "x", "supplied_md5": ""},
                     {"name": "FracAtlas.zip", "download_url": URL, "supplied_md5": self.md5, "size": len(self.payload)}]
            return FakeResponse(json.dumps({"files": files}).encode())
        assert url == URL
        rng = request.get_header("Range")
        self.ranges.append(rng)
        fail, self.fail_after = self.fail_after, None  # fail only once
        if rng and self.honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            return FakeResponse(self.payload[start:], status=206)
        return FakeResponse(self.payload, fail_after=fail)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FXBENCH_OFFLINE", raising=False)


PAYLOAD = _zip_bytes({"FracAtlas/dataset.csv": b"image_id,fractured\r\nA.jpg,0\r\n", "FracAtlas/images/x.bin": random.Random(0).randbytes(200_000)})
MD5 = hashlib.md5(PAYLOAD).hexdigest()


# --------------------------------------------------------------------------------------
# download


def test_download_verifies_md5_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    server = FakeServer(PAYLOAD, MD5)
    monkeypatch.setattr(arc, "_urlopen", server)
    seen: list[tuple[int, int | None]] = []
    path = arc.download(tmp_path, API, progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "FracAtlas.zip" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "FracAtlas.zip.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    record = json.loads((tmp_path / "FracAtlas.json").read_text())
    assert record["md5"] == MD5 and record["source"] == "figshare" and record["version"] == 6
    assert arc.registered_archive(tmp_path) == path.resolve()
    # a second call verifies the existing file and downloads nothing
    assert arc.download(tmp_path, API) == path and server.ranges == [None]


def test_wrong_md5_removes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    monkeypatch.setattr(arc, "_urlopen", FakeServer(PAYLOAD, "0" * 32))
    with pytest.raises(DataError) as err:
        arc.download(tmp_path, API)
    msg = str(err.value)
    assert "MD5 mismatch" in msg and "removed" in msg and "\n" not in msg
    assert not (tmp_path / "FracAtlas.zip").exists() and not (tmp_path / "FracAtlas.zip.part").exists()


def test_interrupted_download_resumes_with_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    server = FakeServer(PAYLOAD, MD5, fail_after=10_000)
    monkeypatch.setattr(arc, "_urlopen", server)
    with pytest.raises(DataError, match="resumes"):
        arc.download(tmp_path, API)
    part = tmp_path / "FracAtlas.zip.part"
    assert part.stat().st_size == 10_000 and not (tmp_path / "FracAtlas.zip").exists()
    path = arc.download(tmp_path, API)
    assert server.ranges == [None, "bytes=10000-"]
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    (tmp_path / "FracAtlas.zip.part").write_bytes(PAYLOAD[:5000])
    monkeypatch.setattr(arc, "_urlopen", FakeServer(PAYLOAD, MD5, honour_range=False))
    assert arc.download(tmp_path, API).read_bytes() == PAYLOAD


def test_offline_mode_names_from_file(tmp_path: Path) -> None:
    with pytest.raises(OfflineError) as err:
        arc.download(tmp_path, API)
    assert "--from-file" in str(err.value) and err.value.exit_code == 5


def test_no_network_is_an_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    import urllib.error

    def refuse(request: Any, timeout: float) -> Any:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(arc, "_urlopen", refuse)
    with pytest.raises(OfflineError, match="--from-file"):
        arc.download(tmp_path, API)


def test_register_from_file(tmp_path: Path) -> None:
    zpath = tmp_path / "mine.zip"
    zpath.write_bytes(PAYLOAD)
    home = tmp_path / "archives"
    assert arc.register_file(zpath, home) == zpath
    assert arc.registered_archive(home) == zpath.resolve()
    with pytest.raises(DataError, match="MD5 mismatch"):
        arc.register_file(zpath, home, md5="1" * 32)
    other = tmp_path / "other.zip"
    other.write_bytes(_zip_bytes({"readme.txt": b"hi"}))
    with pytest.raises(DataError, match="no dataset.csv"):
        arc.register_file(other, home)
    notzip = tmp_path / "x.zip"
    notzip.write_bytes(b"plain text")
    with pytest.raises(DataError, match="not a readable zip"):
        arc.register_file(notzip, home)


# --------------------------------------------------------------------------------------
# hostile archives


def _hostile(kind: str, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("FracAtlas/dataset.csv", "image_id,fractured\n")
            if kind == "slip":
                zf.writestr("FracAtlas/../../evil.txt", "x")
            elif kind == "slip_backslash":
                zf.writestr("FracAtlas\\..\\..\\evil.txt", "x")
            elif kind == "absolute":
                zf.writestr("/tmp/evil.txt", "x")
            elif kind == "drive":
                zf.writestr("C:/evil.txt", "x")
            elif kind == "symlink":
                info = zipfile.ZipInfo("FracAtlas/link")
                info.external_attr = 0o120777 << 16
                zf.writestr(info, "/etc/passwd")
            elif kind == "duplicate":
                zf.writestr("FracAtlas/images/a.jpg", "1")
                zf.writestr("FracAtlas/images/a.jpg", "2")
            elif kind == "bomb":
                zf.writestr("FracAtlas/bomb.bin", b"\0" * (16 << 20))
    return path


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("slip", "zip-slip"), ("slip_backslash", "zip-slip"), ("absolute", "absolute"), ("drive", "absolute"),
     ("symlink", "symbolic link"), ("duplicate", "duplicate member"), ("bomb", "zip bomb")],
)
def test_hostile_zip_is_refused(tmp_path: Path, kind: str, fragment: str) -> None:
    path = _hostile(kind, tmp_path / f"{kind}.zip")
    with pytest.raises(DataError) as err:
        arc.open_zip(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    dest = tmp_path / "out"
    with pytest.raises(DataError):
        arc.extract_zip(path, dest)
    assert not dest.exists() and list(tmp_path.glob(".out.*")) == []  # nothing half-extracted
    assert not (tmp_path.parent / "evil.txt").exists()


def test_total_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    path.write_bytes(_zip_bytes({"FracAtlas/dataset.csv": b"x" * 1000, "FracAtlas/b": b"y" * 1000}))
    with pytest.raises(DataError, match="zip bomb"):
        arc.open_zip(path, arc.ZipLimits(max_total_bytes=1500))


def test_extract_is_complete_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ok.zip"
    path.write_bytes(PAYLOAD)
    dest = arc.extract_zip(path, tmp_path / "raw")
    assert (dest / "FracAtlas" / "dataset.csv").read_bytes().startswith(b"image_id")
    assert (dest / "FracAtlas" / "images" / "x.bin").stat().st_size == 200_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_prepare_refuses_a_hostile_zip(tmp_path: Path) -> None:
    from fxbench.data.prepare import prepare

    path = _hostile("slip", tmp_path / "slip.zip")
    with pytest.raises(DataError, match="zip-slip"):
        prepare(path, tmp_path / "prep", cache_sizes=(32,), workers=1)
    assert not (tmp_path / "prep").exists()
