"""Safe extraction of results archives (`meshnode.cli.archive`): a node's tar.gz may never
write outside its folder, and a refused archive writes nothing at all."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from meshnode.cli.archive import UnsafeArchiveError, extract_archive
from meshnode.errors import MeshnodeError


def _archive(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def _special(name: str, kind: bytes, *, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    return info


def _folder(name: str) -> tarfile.TarInfo:
    return _special(name, tarfile.DIRTYPE, mode=0o755)


def test_files_and_folders_are_extracted(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "r.tar.gz",
        [_folder("outputs"), ("outputs/a.txt", b"hello\n"), ("./stdout", b"out"),
         ("outputs/deep/b.bin", bytes(range(256)))],
    )  # fmt: skip
    written = extract_archive(archive, tmp_path / "out")
    assert sorted(written) == ["outputs/a.txt", "outputs/deep/b.bin", "stdout"]
    assert (tmp_path / "out/outputs/a.txt").read_text() == "hello\n"
    assert (tmp_path / "out/outputs/deep/b.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "out/stdout").read_bytes() == b"out"


def test_permissions_are_plain(tmp_path: Path) -> None:
    executable = tarfile.TarInfo("run.sh")
    executable.mode = 0o4777  # set-uid and world-writable: neither survives
    executable.size = 2
    with tarfile.open(tmp_path / "r.tar.gz", "w:gz") as tar:
        tar.addfile(executable, io.BytesIO(b"#!"))
    extract_archive(tmp_path / "r.tar.gz", tmp_path / "out")
    assert (tmp_path / "out/run.sh").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize(
    ("member", "complaint"),
    [
        (("../escape.txt", b"x"), "outside the results folder"),
        (("outputs/../../escape.txt", b"x"), "outside the results folder"),
        (("/etc/passwd", b"x"), "absolute path"),
        (_special("link", tarfile.SYMTYPE, link="/etc/passwd"), "is a link"),
        (_special("inner", tarfile.SYMTYPE, link="outputs"), "is a link"),
        (_special("hard", tarfile.LNKTYPE, link="outputs/a.txt"), "is a link"),
        (_special("dev", tarfile.CHRTYPE), "not a regular file or folder"),
        (_special("fifo", tarfile.FIFOTYPE), "not a regular file or folder"),
    ],
)
def test_unsafe_members_refuse_the_whole_archive(
    tmp_path: Path, member: tarfile.TarInfo | tuple[str, bytes], complaint: str
) -> None:
    # A harmless file first: it must not be written either.
    archive = _archive(tmp_path / "r.tar.gz", [("outputs/a.txt", b"fine"), member])
    destination = tmp_path / "results" / "e-1"
    with pytest.raises(UnsafeArchiveError, match=complaint):
        extract_archive(archive, destination)
    assert not destination.exists()
    assert sorted(os.listdir(tmp_path)) == ["r.tar.gz"]


def test_a_symlink_then_a_file_through_it_is_refused(tmp_path: Path) -> None:
    """The classic two-step escape: `out -> /tmp`, then `out/x`."""
    archive = _archive(
        tmp_path / "r.tar.gz",
        [_special("out", tarfile.SYMTYPE, link=str(tmp_path / "victim")), ("out/x", b"pwned")],
    )
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "victim").exists()


def test_a_duplicate_file_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "r.tar.gz", [("a.txt", b"1"), ("./a.txt", b"2")])
    with pytest.raises(UnsafeArchiveError, match="twice"):
        extract_archive(archive, tmp_path / "dest")


def test_limits_on_members_and_size(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "r.tar.gz", [(f"f{i}", b"12345") for i in range(5)])
    with pytest.raises(UnsafeArchiveError, match="more than 4 members"):
        extract_archive(archive, tmp_path / "a", max_members=4)
    with pytest.raises(UnsafeArchiveError, match="more than 20 bytes"):
        extract_archive(archive, tmp_path / "b", max_bytes=20)
    assert len(extract_archive(archive, tmp_path / "c", max_bytes=25)) == 5


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    garbage = tmp_path / "r.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UnsafeArchiveError, match=r"not a readable tar archive|damaged"):
        extract_archive(garbage, tmp_path / "dest")


def test_an_existing_non_empty_destination_is_not_overwritten(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "r.tar.gz", [("a.txt", b"new")])
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "a.txt").write_text("mine")
    with pytest.raises(MeshnodeError, match="not empty"):
        extract_archive(archive, destination)
    assert (destination / "a.txt").read_text() == "mine"
