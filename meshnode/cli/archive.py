"""Safe extraction of a results archive (tar.gz) downloaded from a node.

Rules of this module:
- A node is not trusted to send a well-formed archive. Every member is checked before
  anything is written: only regular files and folders, relative names, no `..`, no links
  (symbolic or hard), no devices or FIFOs, and a bound on the member count and total size.
  One bad member refuses the whole archive, so a refusal never leaves half a result.
- Files are written by streaming (never a whole member in memory), with plain permissions
  (no set-uid, no permissions the archive asks for beyond the owner's read/write/execute).
- The destination is created here and must not hold anything yet.
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Final

from meshnode.errors import MeshnodeError

__all__ = ["MAX_ARCHIVE_MEMBERS", "UnsafeArchiveError", "extract_archive"]

MAX_ARCHIVE_MEMBERS: Final = 100_000
MAX_ARCHIVE_BYTES: Final = 1024**4  # a terabyte: a bound against absurd headers, not a quota
_CHUNK_BYTES: Final = 1024 * 1024


class UnsafeArchiveError(MeshnodeError):
    """The archive has a member that could write outside its folder, or is malformed."""


def extract_archive(
    archive: Path,
    destination: Path,
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> list[str]:
    """Extract `archive` (a tar, gzip-compressed or not) into `destination`; returns the
    names of the files written. Raises `UnsafeArchiveError` before writing anything if a
    member is unsafe."""
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise UnsafeArchiveError(f"{archive.name}: not a readable tar archive ({error})") from None
    with tar:
        try:
            members = _checked_members(tar, max_members=max_members, max_bytes=max_bytes)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise UnsafeArchiveError(f"{archive.name}: damaged archive ({error})") from None
        destination.mkdir(parents=True, exist_ok=True)
        if any(destination.iterdir()):
            raise MeshnodeError(f"{destination} is not empty: not extracting over it")
        root = destination.resolve()
        written = []
        for member, name in members:
            target = root.joinpath(*name.split("/"))
            # A second line of defence: the resolved target must stay under the root.
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"{name!r} would be written outside {destination}")
            try:
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_member(tar, member, target)
            except (tarfile.TarError, EOFError, zlib.error) as error:
                raise UnsafeArchiveError(f"{archive.name}: damaged at {name!r} ({error})") from None
            except OSError as error:
                raise MeshnodeError(f"cannot write {target}: {error.strerror or error}") from None
            written.append(name)
        return written


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None, member.name  # regular files always have data
    # "x": never through an existing file (or a link someone raced into place).
    with source, open(target, "xb") as sink:
        shutil.copyfileobj(source, sink, _CHUNK_BYTES)
    # Executable for everyone if the owner could execute it; never set-id bits.
    target.chmod(0o755 if member.mode & 0o100 else 0o644)


def _checked_members(
    tar: tarfile.TarFile, *, max_members: int, max_bytes: int
) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member with its clean relative name; raises on the first unsafe one."""
    checked: list[tuple[tarfile.TarInfo, str]] = []
    total = 0
    seen: set[str] = set()
    for member in tar:
        if len(checked) >= max_members:
            raise UnsafeArchiveError(f"the archive has more than {max_members} members")
        name = member.name
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"{name!r} is a link; results may hold only files")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{name!r} is not a regular file or folder")
        if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"{name!r} is an absolute path")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(f"{name!r} points outside the results folder (..)")
        if not parts:
            continue  # "./": the root itself
        clean = posixpath.join(*parts)
        if member.isfile():
            if clean in seen:
                raise UnsafeArchiveError(f"the archive holds {clean!r} twice")
            total += member.size
            if total > max_bytes:
                raise UnsafeArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
        seen.add(clean)
        checked.append((member, clean))
    return checked
