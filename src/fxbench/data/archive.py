"""Get the FracAtlas archive: figshare download (pinned version), MD5 check, resume, safe unzip.

Nothing here downloads unless asked. The download goes to ``<name>.part`` next to the final
file, resumes with an HTTP ``Range`` request, is checked against figshare's ``supplied_md5`` and
only then renamed to its final name, so a half-written or corrupt archive never carries the
final name. ``--from-file`` registers a zip obtained elsewhere (the offline route).

Zip members are checked before anything is read or extracted: no absolute paths, no ``..``
components (zip-slip), no symlinks, no duplicate names, and bounded sizes (zip bombs).
Only ``urllib`` is used (no extra dependency).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxbench.errors import DataError, OfflineError
from fxbench.io import write_json_atomic

ARTICLE_ID = 22363012
#: Pinned figshare version: v6 is what the seed benchmark used (doi 10.6084/m9.figshare.22363012.v6).
ARTICLE_VERSION = 6
API_URL = f"https://api.figshare.com/v2/articles/{ARTICLE_ID}/versions/{ARTICLE_VERSION}"
ARCHIVE_NAME = "FracAtlas.zip"
#: MD5s of archives we know. v6's is read from the API at download time (``supplied_md5``).
KNOWN_MD5 = {"fe9da2c7c285915ebee69dfdab8fd396": "figshare FracAtlas.zip v7 (338,436,460 bytes)"}
OFFLINE_ENV = "FXBENCH_OFFLINE"
CHUNK = 1 << 20
TIMEOUT_S = 30.0

#: Signature of a progress callback: (bytes done, total bytes or None when unknown).
ByteProgress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class ZipLimits:
    """Bounds that make a zip bomb a clean error instead of a full disk.

    Sizes are in bytes. The ratio check only applies to members above ``ratio_min_bytes``:
    a small member cannot exhaust anything, and empty or tiny text files compress extremely.
    """

    max_members: int = 200_000
    max_total_bytes: int = 8 << 30
    max_member_bytes: int = 2 << 30
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1 << 20


DEFAULT_LIMITS = ZipLimits()


@dataclass(frozen=True)
class RemoteFile:
    """One file of the figshare article (fields of the API's ``files`` array)."""

    name: str
    url: str
    md5: str | None
    size: int | None


# --------------------------------------------------------------------------------------
# zip safety


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why ``info`` is unsafe to read or extract, or None when it is fine."""
    name = info.filename
    unix_mode = info.external_attr >> 16
    if stat.S_ISLNK(unix_mode):
        return "is a symbolic link"
    # Windows tools write backslashes; treat them as separators so '..\\x' is caught too.
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "has an absolute path"
    if ".." in norm.split("/"):
        return "escapes the extraction folder (zip-slip '..' path)"
    if "\x00" in norm:
        return "has a NUL byte in its name"
    return None


def check_zip(zf: zipfile.ZipFile, where: str, limits: ZipLimits = DEFAULT_LIMITS) -> None:
    """Refuse a hostile archive with one line: slip paths, symlinks, duplicates, bombs.

    Declared sizes are enough: ``zipfile`` never returns more bytes than a member declares
    (and checks its CRC), so a member cannot inflate past the size checked here.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DataError(f"{where}: {len(infos)} members exceed the limit of {limits.max_members}", "this is not a FracAtlas archive")
    seen: set[str] = set()
    total = 0
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise DataError(f"{where}: member '{info.filename}' {problem}; refusing the archive", "get the archive from its official source")
        key = posixpath.normpath(info.filename.replace("\\", "/")).rstrip("/")
        if key in seen:
            raise DataError(f"{where}: duplicate member name '{info.filename}'; refusing the archive", "get the archive from its official source")
        seen.add(key)
        size = info.file_size
        if size > limits.max_member_bytes:
            raise DataError(f"{where}: member '{info.filename}' unpacks to {size:,} bytes (limit {limits.max_member_bytes:,}); refusing a possible zip bomb")
        if size >= limits.ratio_min_bytes and size > limits.max_ratio * max(info.compress_size, 1):
            ratio = size / max(info.compress_size, 1)
            raise DataError(f"{where}: member '{info.filename}' has compression ratio {ratio:.0f}:1 (limit {limits.max_ratio:.0f}); refusing a possible zip bomb")
        total += size
        if total > limits.max_total_bytes:
            raise DataError(f"{where}: unpacks to more than {limits.max_total_bytes:,} bytes; refusing a possible zip bomb")


def bad_archive_hint(path: Path) -> str:
    """What to do about an unreadable archive: download again only when fxbench downloaded it.

    A file of the user's own (``--archive``, ``download --from-file``) is not fixed by
    ``fxbench download --force``; say what a FracAtlas archive is instead.
    """
    from fxbench.paths import archives_dir

    try:
        ours = Path(path).resolve() == (archives_dir() / ARCHIVE_NAME).resolve()
    except OSError:
        ours = False
    if ours:
        return "download it again with `fxbench download --force`"
    return "give FracAtlas.zip, 338 MB from figshare, or the folder it unpacks to; `fxbench download` fetches it"


def open_zip(path: str | os.PathLike[str], limits: ZipLimits = DEFAULT_LIMITS) -> zipfile.ZipFile:
    """Open and check a zip; a bad or hostile file becomes a one-line DataError."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError as err:
        raise DataError(f"archive not found: {path}", "check the path, or run `fxbench download`") from err
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        size = path.stat().st_size if path.is_file() else 0
        what = "an empty file" if path.is_file() and size == 0 else f"{size:,} bytes" if path.is_file() else "not a file"
        raise DataError(f"{path} is not a readable zip archive ({err}; {what})", bad_archive_hint(path)) from err
    try:
        check_zip(zf, str(path), limits)
    except BaseException:
        zf.close()
        raise
    return zf


def extract_zip(
    zip_path: str | os.PathLike[str], dest: str | os.PathLike[str], limits: ZipLimits = DEFAULT_LIMITS, force: bool = False
) -> Path:
    """Extract a checked zip into ``dest`` atomically (temp folder beside it, then rename).

    Returns ``dest``. An existing ``dest`` is kept unless ``force``; a failure leaves no
    partial folder under the final name.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with open_zip(zip_path, limits) as zf:
            for info in zf.infolist():
                target = tmp / info.filename.replace("\\", "/")
                # Belt and braces after check_zip: the resolved target must stay inside tmp.
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise DataError(f"{zip_path}: member '{info.filename}' escapes the extraction folder; refusing the archive")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{zip_path}: corrupt member ({err})", bad_archive_hint(Path(zip_path))) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --------------------------------------------------------------------------------------
# HTTP


def _urlopen(request: urllib.request.Request, timeout: float) -> Any:
    """The one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https URLs only


def _offline_error(reason: str) -> OfflineError:
    return OfflineError(
        f"cannot download FracAtlas: {reason}",
        f"obtain {ARCHIVE_NAME} elsewhere and run `fxbench download --from-file /path/to/{ARCHIVE_NAME}`",
    )


def _is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def _request(url: str, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "fxbench", **(headers or {})})
    try:
        return _urlopen(req, TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        raise _offline_error(f"no network ({getattr(err, 'reason', err)})") from err


def fetch_metadata(api_url: str = API_URL) -> RemoteFile:
    """Ask figshare which zip belongs to the pinned article version."""
    try:
        with _request(api_url, {"Accept": "application/json"}) as resp:
            meta = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise DataError(f"figshare API {api_url} answered HTTP {err.code}", "retry later, or use --from-file") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"figshare API {api_url} returned invalid JSON", "retry later, or use --from-file") from err
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, list) or not files:
        raise DataError(f"figshare API {api_url} lists no files", "use --from-file with a local FracAtlas.zip")
    zips = [f for f in files if isinstance(f, dict) and str(f.get("name", "")).lower().endswith(".zip")]
    chosen = zips[0] if zips else files[0]
    url = chosen.get("download_url")
    if not isinstance(url, str) or not url:
        raise DataError(f"figshare API {api_url}: file entry has no download_url", "use --from-file")
    md5 = chosen.get("supplied_md5") or chosen.get("computed_md5") or None
    size = chosen.get("size")
    return RemoteFile(str(chosen.get("name") or ARCHIVE_NAME), url, md5, int(size) if isinstance(size, int) else None)


def md5_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.md5()  # noqa: S324 - integrity check against figshare's MD5, not security
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _stream_to_part(remote: RemoteFile, part: Path, progress: ByteProgress | None) -> None:
    """Append the rest of ``remote`` to ``part``, resuming from its current length."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _request(remote.url, headers)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete: the server has nothing past our end
            return
        raise DataError(f"download of {remote.url} failed: HTTP {err.code}", "retry `fxbench download`; it resumes") from err
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        if have and status != 206:
            have = 0  # the server ignored Range: start over rather than append a second copy
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else remote.size
        mode = "ab" if have else "wb"
        done = have
        with open(part, mode) as fh:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, TimeoutError) as err:
                    raise DataError(f"download interrupted after {done:,} bytes ({err})", "rerun `fxbench download`; it resumes from the .part file") from err
                if not block:
                    break
                fh.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())
    if remote.size is not None and done < remote.size:
        raise DataError(f"download stopped at {done:,} of {remote.size:,} bytes", "rerun `fxbench download`; it resumes from the .part file")


def _verify_md5(path: Path, expected: str | None) -> str:
    """Return the MD5; on a mismatch delete ``path`` and raise."""
    actual = md5_file(path)
    if expected and actual.lower() != expected.lower():
        path.unlink(missing_ok=True)
        raise DataError(
            f"MD5 mismatch for {path.name}: got {actual}, expected {expected}; the corrupt file was removed",
            "rerun `fxbench download` to fetch it again",
        )
    return actual


def _record_path(dest_dir: Path) -> Path:
    return dest_dir / "FracAtlas.json"


def _write_record(dest_dir: Path, archive: Path, md5: str, source: str, extra: dict[str, Any] | None = None) -> None:
    record = {
        "path": str(archive.resolve()),
        "md5": md5,
        "bytes": archive.stat().st_size,
        "source": source,
        "known_as": KNOWN_MD5.get(md5),
        "article": ARTICLE_ID,
        "registered": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json_atomic(_record_path(dest_dir), record)


def download(
    dest_dir: str | os.PathLike[str] | None = None,
    api_url: str = API_URL,
    force: bool = False,
    progress: ByteProgress | None = None,
) -> Path:
    """Download the pinned FracAtlas zip into ``dest_dir`` (default ``<data home>/archives``).

    Resumes a ``.part`` file, checks the MD5 (a mismatch removes the file), renames into place
    and records provenance in ``FracAtlas.json``. Offline: OfflineError naming ``--from-file``.
    """
    from fxbench.paths import archives_dir

    dest_dir = Path(dest_dir) if dest_dir else archives_dir()
    if _is_offline():
        raise _offline_error(f"offline mode is on ({OFFLINE_ENV}=1)")
    remote = fetch_metadata(api_url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / Path(remote.name).name
    part = final.with_name(final.name + ".part")
    if final.exists() and not force:
        md5 = _verify_md5(final, remote.md5)
        _write_record(dest_dir, final, md5, "figshare", {"url": remote.url, "version": ARTICLE_VERSION})
        return final
    if force:
        part.unlink(missing_ok=True)
    _stream_to_part(remote, part, progress)
    md5 = _verify_md5(part, remote.md5)
    os.replace(part, final)
    _write_record(dest_dir, final, md5, "figshare", {"url": remote.url, "version": ARTICLE_VERSION})
    return final


def register_file(
    zip_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str] | None = None, md5: str | None = None
) -> Path:
    """Register a FracAtlas zip obtained elsewhere (offline route). The file is not copied.

    It must be a safe zip holding a ``dataset.csv``; ``md5`` (optional) must match. The
    record in ``<dest_dir>/FracAtlas.json`` makes it the default ``--archive`` of prepare.
    """
    from fxbench.paths import archives_dir

    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise DataError(f"--from-file: {zip_path} does not exist or is not a file", "give the path of FracAtlas.zip")
    with open_zip(zip_path) as zf:
        if not any(posixpath.basename(n) == "dataset.csv" for n in zf.namelist()):
            raise DataError(f"{zip_path} has no dataset.csv; it is not a FracAtlas archive", "give the path of FracAtlas.zip")
    actual = md5_file(zip_path)
    if md5 and actual.lower() != md5.lower():
        raise DataError(f"MD5 mismatch for {zip_path}: got {actual}, expected {md5}", "check the file, or omit --md5")
    dest_dir = Path(dest_dir) if dest_dir else archives_dir()
    _write_record(dest_dir, zip_path, actual, "from-file")
    return zip_path


def registered_archive(dest_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The archive recorded by ``download`` or ``--from-file``, if it still exists."""
    from fxbench.paths import archives_dir

    dest_dir = Path(dest_dir) if dest_dir else archives_dir()
    try:
        path = Path(json.loads(_record_path(dest_dir).read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        path = dest_dir / ARCHIVE_NAME
    return path if path.exists() else None
