"""courtyard.archives: every refusal with a real crafted archive, plus the happy paths."""

from __future__ import annotations

import gzip
import random
import shutil
import stat
import tarfile
import unicodedata
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from archive_kit import (
    MiB,
    make_tgz,
    make_zip,
    patch_zip,
    snapshot,
    tar_bytes,
    tar_dir,
    tar_file,
    tar_special,
    write_zeros_zip,
    zip_entry,
    zip_files,
)
from courtyard.archives import (
    ArchiveError,
    Limits,
    archive_kind,
    extract,
    flatten_root,
)
from courtyard.installs import (
    BACKUP_PREFIX,
    NEW_PREFIX,
    STAGING_PREFIX,
    accept_tree,
    clean_staging,
    install_tree,
    replaced,
    restore_tree,
    staging_dir,
)
from courtyard_sdk import ApiError

# -- checking refusals -----------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    folder.mkdir()
    return folder


def refuse(
    archive: Path,
    kind: str,
    target: Path,
    code: str,
    status: int = 400,
    limits: Limits | None = None,
    entry: str | None = None,
) -> ArchiveError:
    """Extraction fails with `code`, leaving `target` empty and nothing new anywhere."""
    root = target.parent
    before = snapshot(root)
    with pytest.raises(ArchiveError) as caught:
        extract(archive, kind, target, limits or Limits())
    error = caught.value
    assert (error.status, error.code) == (status, code), error.message
    assert error.message
    if entry is not None:
        assert repr(entry) in error.message
    assert list(target.iterdir()) == []
    assert snapshot(root) == before
    return error


def test_archive_error_is_an_api_error() -> None:
    error = ArchiveError(400, "PATH_TRAVERSAL", "Entry '../x' has a '..' component")
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.message) == (
        400,
        "PATH_TRAVERSAL",
        "Entry '../x' has a '..' component",
    )


# -- archive_kind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kind"),
    [("p.tgz", "tar.gz"), ("p-1.0.TAR.GZ", "tar.gz"), ("p.zip", "zip"), ("P.ZIP", "zip")],
)
def test_archive_kind(filename: str, kind: str) -> None:
    assert archive_kind(filename) == kind


@pytest.mark.parametrize("filename", ["p.tar", "p.gz", "p.zip.exe", "p.7z", "zip", ""])
def test_archive_kind_refuses_other_files(filename: str) -> None:
    with pytest.raises(ArchiveError) as caught:
        archive_kind(filename)
    assert caught.value.status == 400
    assert caught.value.code == "INVALID_FILE_TYPE"
    assert caught.value.message == "File must be .tgz, .tar.gz, or .zip"


# -- valid archives --------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tgz_extracts_contents_and_safe_modes(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(
        tmp_path / "a.tgz",
        [
            tar_dir("./"),
            tar_dir("./bin", mode=0o1777),
            tar_file("./bin/run", b"#!/bin/sh\n", mode=0o4755),
            tar_file("./bin/tool", b"tool", mode=0o700),
            tar_file("./README.md", b"hello", mode=0o6666),
            tar_file("./secret.txt", b"s", mode=0o600),
            tar_file("lib/deep/index.js", b"export {}"),
            tar_dir("private", mode=0o700),
        ],
    )
    extract(archive, "tar.gz", target, Limits())

    files = {p.relative_to(target).as_posix() for p in target.rglob("*")}
    assert files == {
        "bin",
        "bin/run",
        "bin/tool",
        "README.md",
        "secret.txt",
        "lib",
        "lib/deep",
        "lib/deep/index.js",
        "private",
    }
    assert (target / "bin/run").read_bytes() == b"#!/bin/sh\n"
    assert (target / "lib/deep/index.js").read_text() == "export {}"
    assert mode_of(target / "bin/run") == 0o755  # setuid dropped
    assert mode_of(target / "bin/tool") == 0o755
    assert mode_of(target / "README.md") == 0o644  # setgid and world-write dropped
    assert mode_of(target / "secret.txt") == 0o644
    for folder in ("bin", "lib", "lib/deep", "private"):
        assert mode_of(target / folder) == 0o755  # sticky bit dropped


def test_zip_extracts_contents_and_safe_modes(tmp_path: Path, target: Path) -> None:
    dos = zipfile.ZipInfo("dos.txt")  # made on Windows: no unix mode at all
    dos.create_system = 0
    archive = make_zip(
        tmp_path / "a.zip",
        [
            (zip_entry("app/", mode=0o040700), b""),
            (zip_entry("app/run.sh", mode=0o104755), b"#!/bin/sh\n"),
            (zip_entry("app/data.json", mode=0o100666), b"{}"),
            (zip_entry("./app/stored.txt"), b"plain"),
            ("nested/dir/file.txt", b"deep"),
            (dos, b"dos"),
        ],
    )
    extract(archive, "zip", target, Limits())

    assert (target / "app/run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (target / "app/data.json").read_bytes() == b"{}"
    assert (target / "app/stored.txt").read_bytes() == b"plain"
    assert (target / "nested/dir/file.txt").read_bytes() == b"deep"
    assert (target / "dos.txt").read_bytes() == b"dos"
    assert mode_of(target / "app/run.sh") == 0o755
    assert mode_of(target / "app/data.json") == 0o644
    assert mode_of(target / "dos.txt") == 0o644
    assert mode_of(target / "app") == 0o755
    assert mode_of(target / "nested/dir") == 0o755


def test_empty_zip_extracts_nothing(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "empty.zip", [])
    assert archive.read_bytes().startswith(b"PK\x05\x06")
    extract(archive, "zip", target, Limits())
    assert list(target.iterdir()) == []


def test_folder_entry_after_its_files_is_fine(tmp_path: Path, target: Path) -> None:
    archive = zip_files(tmp_path / "a.zip", ["a/b.txt", "a/", "c/", "c/d.txt"])
    extract(archive, "zip", target, Limits())
    assert (target / "a/b.txt").is_file()
    assert (target / "c/d.txt").is_file()


def test_npm_pack_layout_is_flattened(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(
        tmp_path / "plugin-1.0.0.tgz",
        [
            tar_file("package/package.json", b'{"name": "plugin"}'),
            tar_file("package/lib/index.js", b"module.exports = {}"),
        ],
    )
    extract(archive, archive_kind(archive.name), target, Limits())
    root = flatten_root(target)
    assert root == target / "package"
    assert (root / "package.json").read_text() == '{"name": "plugin"}'


def test_flatten_root_keeps_other_layouts(tmp_path: Path) -> None:
    one_file = tmp_path / "one_file"
    one_file.mkdir()
    (one_file / "manifest.json").write_text("{}")
    two = tmp_path / "two"
    (two / "app").mkdir(parents=True)
    (two / "manifest.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    single = tmp_path / "single"
    (single / "my-app").mkdir(parents=True)

    assert flatten_root(one_file) == one_file
    assert flatten_root(two) == two
    assert flatten_root(empty) == empty
    assert flatten_root(single) == single / "my-app"


def test_target_must_be_empty(tmp_path: Path, target: Path) -> None:
    (target / "old.txt").write_text("x")
    archive = zip_files(tmp_path / "a.zip", ["a.txt"])
    with pytest.raises(ValueError, match="not empty"):
        extract(archive, "zip", target, Limits())


# -- path traversal --------------------------------------------------------------------

TRAVERSAL_NAMES = [
    "../evil.txt",
    "a/../../evil.txt",
    "a/b/../../../evil.txt",
    "..",
    "..\\evil.txt",
    "a\\b.txt",
    "C:/evil.txt",
    "c:evil.txt",
    "a/b\nc.txt",
    "a\x1b[31m.txt",
    "a\x7f.txt",
    "a\x85.txt",
    "a\tb.txt",
]


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_tgz_path_traversal(tmp_path: Path, target: Path, name: str) -> None:
    archive = make_tgz(tmp_path / "a.tgz", [tar_file("ok.txt"), tar_file(name)])
    refuse(archive, "tar.gz", target, "PATH_TRAVERSAL", entry=name)


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_zip_path_traversal(tmp_path: Path, target: Path, name: str) -> None:
    archive = zip_files(tmp_path / "a.zip", ["ok.txt", name])
    refuse(archive, "zip", target, "PATH_TRAVERSAL", entry=name)


def test_tgz_absolute_path(tmp_path: Path, target: Path) -> None:
    # Short names: the whole absolute path must stay within the 80 characters an error
    # message shows of a name, even under pytest-xdist's longer temporary folders.
    outside = tmp_path / "o" / "e.txt"
    archive = make_tgz(tmp_path / "a.tgz", [tar_file(str(outside))])
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [str(outside)]  # really absolute in the archive
    refuse(archive, "tar.gz", target, "PATH_TRAVERSAL", entry=str(outside))
    assert not outside.parent.exists()


def test_zip_absolute_path(tmp_path: Path, target: Path) -> None:
    # Short names: the whole absolute path must stay within the 80 characters an error
    # message shows of a name, even under pytest-xdist's longer temporary folders.
    outside = tmp_path / "o" / "e.txt"
    archive = zip_files(tmp_path / "a.zip", [str(outside)])
    refuse(archive, "zip", target, "PATH_TRAVERSAL", entry=str(outside))
    assert not outside.parent.exists()


def test_tgz_nul_in_name(tmp_path: Path, target: Path) -> None:
    info, data = tar_file("placeholder")
    info.pax_headers = {"path": "evil.txt\x00.json"}  # a pax path keeps its NUL
    archive = make_tgz(tmp_path / "a.tgz", [(info, data)])
    refuse(archive, "tar.gz", target, "PATH_TRAVERSAL", entry="evil.txt\x00.json")


def test_zip_nul_in_name(tmp_path: Path, target: Path) -> None:
    archive = zip_files(tmp_path / "a.zip", ["evil.txt#.json"])
    archive.write_bytes(archive.read_bytes().replace(b"evil.txt#.json", b"evil.txt\x00.json"))
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == ["evil.txt"]  # zipfile itself would cut the name short
    refuse(archive, "zip", target, "PATH_TRAVERSAL", entry="evil.txt\x00.json")


def test_tgz_name_that_is_not_utf8(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(tmp_path / "a.tgz", [tar_file("bad\udcff.txt")])  # raw byte 0xff
    refuse(archive, "tar.gz", target, "INVALID_ENTRY", entry="bad\udcff.txt")


def test_checks_do_not_depend_on_tarfile_data_filter(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(tarfile, "data_filter")  # as on Python < 3.11.4
    archive = make_tgz(tmp_path / "a.tgz", [tar_file("../evil.txt")])
    refuse(archive, "tar.gz", target, "PATH_TRAVERSAL", entry="../evil.txt")
    link = make_tgz(tmp_path / "b.tgz", [tar_special("l", tarfile.SYMTYPE, "/etc/passwd")])
    refuse(link, "tar.gz", target, "UNSAFE_ENTRY", entry="l")
    extract(
        make_tgz(tmp_path / "c.tgz", [tar_file("ok.txt", mode=0o4755)]), "tar.gz", target, Limits()
    )
    assert mode_of(target / "ok.txt") == 0o755


# -- unsafe entries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "linkname", "what"),
    [
        (tarfile.SYMTYPE, "/etc/passwd", "a link"),
        (tarfile.SYMTYPE, "ok.txt", "a link"),
        (tarfile.LNKTYPE, "ok.txt", "a link"),
        (tarfile.CHRTYPE, "", "a device"),
        (tarfile.BLKTYPE, "", "a device"),
        (tarfile.FIFOTYPE, "", "a FIFO"),
        (b"V", "", "unsupported type"),
    ],
)
def test_tgz_unsafe_entries(
    tmp_path: Path, target: Path, kind: bytes, linkname: str, what: str
) -> None:
    archive = make_tgz(
        tmp_path / "a.tgz", [tar_file("ok.txt"), tar_special("special", kind, linkname)]
    )
    error = refuse(archive, "tar.gz", target, "UNSAFE_ENTRY", entry="special")
    assert what in error.message


@pytest.mark.parametrize(
    ("mode", "what"),
    [(stat.S_IFLNK | 0o777, "a link"), (stat.S_IFIFO | 0o644, "a special file")],
)
def test_zip_unsafe_entries(tmp_path: Path, target: Path, mode: int, what: str) -> None:
    archive = make_zip(
        tmp_path / "a.zip", [("ok.txt", b"x"), (zip_entry("link", mode=mode), b"/etc/passwd")]
    )
    error = refuse(archive, "zip", target, "UNSAFE_ENTRY", entry="link")
    assert what in error.message


def test_tgz_setuid_is_dropped_not_refused(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(tmp_path / "a.tgz", [tar_file("su", mode=0o6755)])
    extract(archive, "tar.gz", target, Limits())
    assert mode_of(target / "su") == 0o755


def test_zip_encrypted_entry(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("secret.txt", b"x")])
    archive.write_bytes(patch_zip(archive.read_bytes(), "secret.txt", "flags", 0x1))
    error = refuse(archive, "zip", target, "INVALID_ENTRY", entry="secret.txt")
    assert "encrypted" in error.message


def test_zip_unsupported_compression(tmp_path: Path, target: Path) -> None:
    info = zip_entry("data.txt")
    info.compress_type = zipfile.ZIP_BZIP2
    archive = make_zip(tmp_path / "a.zip", [(info, b"x" * 100)])
    refuse(archive, "zip", target, "INVALID_ENTRY", entry="data.txt")


# -- duplicates ------------------------------------------------------------------------

NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")

DUPLICATES = [
    pytest.param(["a.txt", "a.txt"], "a.txt", id="same-twice"),
    pytest.param(["a.txt", "./a.txt"], "./a.txt", id="dot-slash"),
    pytest.param(["a/b.txt", "a//b.txt"], "a//b.txt", id="double-slash"),
    pytest.param([NFC, NFD], NFD, id="unicode-nfc-nfd"),
    pytest.param(["README.md", "readme.md"], "readme.md", id="case"),
    pytest.param(["Straße/x", "STRASSE/y", "strasse"], "strasse", id="casefold"),
    pytest.param(["a", "a/b.txt"], "a/b.txt", id="file-then-folder"),
    pytest.param(["a/b.txt", "a"], "a", id="folder-then-file"),
    pytest.param(["a/", "a"], "a", id="folder-entry-then-file"),
    pytest.param(["a/", "a/"], "a/", id="folder-twice"),
]


@pytest.mark.parametrize(("names", "offender"), DUPLICATES)
def test_tgz_duplicates(tmp_path: Path, target: Path, names: list[str], offender: str) -> None:
    members = [tar_dir(n) if n.endswith("/") else tar_file(n) for n in names]
    archive = make_tgz(tmp_path / "a.tgz", members)
    shown = offender.rstrip("/")  # tarfile strips a folder's trailing slash
    refuse(archive, "tar.gz", target, "DUPLICATE_ENTRY", entry=shown)


@pytest.mark.parametrize(("names", "offender"), DUPLICATES)
def test_zip_duplicates(tmp_path: Path, target: Path, names: list[str], offender: str) -> None:
    archive = zip_files(tmp_path / "a.zip", names)
    refuse(archive, "zip", target, "DUPLICATE_ENTRY", entry=offender)


# -- limits ----------------------------------------------------------------------------


def test_too_many_entries(tmp_path: Path, target: Path) -> None:
    limits = Limits(max_entries=3)
    names = [f"f{i}.txt" for i in range(4)]
    tgz = make_tgz(tmp_path / "a.tgz", [tar_file(n) for n in names])
    refuse(tgz, "tar.gz", target, "TOO_MANY_ENTRIES", limits=limits, entry="f3.txt")
    zipped = zip_files(tmp_path / "a.zip", names)
    refuse(zipped, "zip", target, "TOO_MANY_ENTRIES", limits=limits, entry="f3.txt")
    extract(zip_files(tmp_path / "b.zip", names[:3]), "zip", target, limits)


def test_path_too_long(tmp_path: Path, target: Path) -> None:
    name = "dir/" + "x" * 252  # 256 bytes
    tgz = make_tgz(tmp_path / "a.tgz", [tar_file(name)])
    error = refuse(tgz, "tar.gz", target, "INVALID_ENTRY")
    assert "longer than 255 bytes" in error.message
    refuse(zip_files(tmp_path / "a.zip", [name]), "zip", target, "INVALID_ENTRY")
    # multi-byte characters count as bytes: 128 * 2 bytes > 255
    refuse(zip_files(tmp_path / "b.zip", ["é" * 128]), "zip", target, "INVALID_ENTRY")
    extract(zip_files(tmp_path / "ok.zip", [name[:-1]]), "zip", target, Limits())


def test_path_too_deep(tmp_path: Path, target: Path) -> None:
    name = "d/" * 32 + "f.txt"  # 33 levels
    tgz = make_tgz(tmp_path / "a.tgz", [tar_file(name)])
    error = refuse(tgz, "tar.gz", target, "INVALID_ENTRY")
    assert "deeper than 32" in error.message
    refuse(zip_files(tmp_path / "a.zip", [name]), "zip", target, "INVALID_ENTRY", entry=name)
    extract(zip_files(tmp_path / "ok.zip", [name[2:]]), "zip", target, Limits())


def test_declared_size_over_the_extracted_limit(tmp_path: Path, target: Path) -> None:
    limits = Limits(max_extracted_bytes=1000)
    data = random.Random(1).randbytes(600)  # incompressible: no ratio involved
    members = [tar_file("a.bin", data), tar_file("b.bin", data)]
    tgz = make_tgz(tmp_path / "a.tgz", members)
    error = refuse(tgz, "tar.gz", target, "ARCHIVE_TOO_LARGE", 413, limits, entry="b.bin")
    assert "Extracted size exceeds the limit of 1000 bytes" in error.message
    zipped = make_zip(tmp_path / "a.zip", [("a.bin", data), ("b.bin", data)])
    refuse(zipped, "zip", target, "ARCHIVE_TOO_LARGE", 413, limits, entry="b.bin")


def test_archive_file_over_the_upload_limit(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("a.bin", random.Random(2).randbytes(5000))])
    error = refuse(archive, "zip", target, "ARCHIVE_TOO_LARGE", 413, Limits(max_archive_bytes=4000))
    assert "4000" in error.message


def test_zip_bomb_is_refused_by_ratio_before_writing(tmp_path: Path, target: Path) -> None:
    archive = write_zeros_zip(tmp_path / "bomb.zip", "zeros.bin", 50 * MiB)
    assert archive.stat().st_size < MiB
    error = refuse(archive, "zip", target, "ARCHIVE_BOMB", entry="zeros.bin")
    assert str(50 * MiB) in error.message


def test_zip_bomb_spread_over_many_entries(tmp_path: Path, target: Path) -> None:
    chunk = bytes(512 * 1024)  # each entry stays under the grace size
    archive = make_zip(tmp_path / "bomb.zip", [(f"z{i}.bin", chunk) for i in range(20)])
    error = refuse(archive, "zip", target, "ARCHIVE_BOMB")
    assert "times its size" in error.message


def test_tgz_bomb_is_refused_by_ratio(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(tmp_path / "bomb.tgz", [tar_file("zeros.bin", bytes(20 * MiB))])
    assert archive.stat().st_size < MiB
    refuse(archive, "tar.gz", target, "ARCHIVE_BOMB", entry="zeros.bin")


def test_small_compressible_files_are_not_bombs(tmp_path: Path, target: Path) -> None:
    data = bytes(512 * 1024)
    extract(make_zip(tmp_path / "a.zip", [("z.bin", data)]), "zip", target, Limits())
    assert (target / "z.bin").read_bytes() == data


def test_ratio_limit_is_configurable(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("z.bin", bytes(64 * 1024))])
    limits = Limits(max_ratio=10, ratio_grace_bytes=0)
    refuse(archive, "zip", target, "ARCHIVE_BOMB", limits=limits, entry="z.bin")


# -- headers that lie, damaged archives ------------------------------------------------


def test_tgz_header_claiming_more_data_than_present(tmp_path: Path, target: Path) -> None:
    info, data = tar_file("big.bin", b"y" * 1000)
    raw = tar_bytes([tar_file("ok.txt"), (info, data)])
    header_end = raw.index(b"y" * 1000)
    archive = tmp_path / "lying.tgz"
    archive.write_bytes(gzip.compress(raw[: header_end + 10]))  # 10 of 1000 bytes
    error = refuse(archive, "tar.gz", target, "CORRUPT_ARCHIVE")
    assert "unexpected end of data" in error.message


def test_zip_header_claiming_less_data_than_present(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("ok.txt", b"fine"), ("lie.txt", b"z" * 5000)])
    archive.write_bytes(patch_zip(archive.read_bytes(), "lie.txt", "size", 10))
    refuse(archive, "zip", target, "CORRUPT_ARCHIVE", entry="lie.txt")


def test_zip_header_claiming_more_data_than_present(tmp_path: Path, target: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("ok.txt", b"fine"), ("lie.txt", b"z" * 50)])
    archive.write_bytes(patch_zip(archive.read_bytes(), "lie.txt", "size", 5000))
    error = refuse(archive, "zip", target, "CORRUPT_ARCHIVE", entry="lie.txt")
    assert "holds 50 bytes, its header says 5000" in error.message


def test_oversized_tar_header_is_not_read_into_memory(tmp_path: Path, target: Path) -> None:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 2 * MiB
    raw = pax.tobuf(tarfile.USTAR_FORMAT) + bytes(2 * MiB) + tar_bytes([tar_file("a.txt")])
    archive = tmp_path / "pax.tgz"
    archive.write_bytes(gzip.compress(raw))
    error = refuse(archive, "tar.gz", target, "INVALID_ENTRY")
    assert "oversized tar header" in error.message


def test_chained_pax_headers_fail_cleanly(tmp_path: Path, target: Path) -> None:
    record = b"20 comment=aaaaaaaa\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    block = pax.tobuf(tarfile.USTAR_FORMAT) + record.ljust(512, b"\0")
    archive = tmp_path / "chain.tgz"
    archive.write_bytes(gzip.compress(block * 2000 + tar_bytes([tar_file("a.txt")])))
    refuse(archive, "tar.gz", target, "CORRUPT_ARCHIVE")


def test_gzip_named_zip_is_invalid_file_type(tmp_path: Path, target: Path) -> None:
    archive = make_tgz(tmp_path / "plugin.zip", [tar_file("a.txt")])
    error = refuse(archive, archive_kind(archive.name), target, "INVALID_FILE_TYPE")
    assert "not a zip archive" in error.message


def test_zip_named_tgz_is_invalid_file_type(tmp_path: Path, target: Path) -> None:
    archive = zip_files(tmp_path / "plugin.tgz", ["a.txt"])
    refuse(archive, archive_kind(archive.name), target, "INVALID_FILE_TYPE")


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK", b"\x1f"])
def test_other_content_is_invalid_file_type(tmp_path: Path, target: Path, content: bytes) -> None:
    archive = tmp_path / "junk"
    archive.write_bytes(content)
    refuse(archive, "zip", target, "INVALID_FILE_TYPE")
    refuse(archive, "tar.gz", target, "INVALID_FILE_TYPE")


def test_unknown_kind_is_invalid_file_type(tmp_path: Path, target: Path) -> None:
    refuse(zip_files(tmp_path / "a.zip", ["a"]), "rar", target, "INVALID_FILE_TYPE")


@pytest.mark.parametrize(
    "content",
    [
        gzip.compress(b"this is not a tar archive" * 40),
        gzip.compress(tar_bytes([tar_file("a.txt", b"x" * 3000)]))[:-30],
        b"\x1f\x8b" + bytes(100),
        b"PK\x03\x04" + bytes(100),
    ],
    ids=["gzip-not-tar", "truncated-gzip", "bad-gzip", "bad-zip"],
)
def test_damaged_archives(tmp_path: Path, target: Path, content: bytes) -> None:
    archive = tmp_path / "damaged"
    archive.write_bytes(content)
    kind = "zip" if content.startswith(b"PK") else "tar.gz"
    refuse(archive, kind, target, "CORRUPT_ARCHIVE")


def test_truncated_zip(tmp_path: Path, target: Path) -> None:
    archive = zip_files(tmp_path / "a.zip", ["a.txt", "b.txt"])
    archive.write_bytes(archive.read_bytes()[:-40])
    refuse(archive, "zip", target, "CORRUPT_ARCHIVE")


def damaged_copies(original: bytes, seed: str, count: int) -> Iterable[bytes]:
    """`count` copies of `original`, each with a few random bytes changed or cut short."""
    rng = random.Random(seed)
    for attempt in range(count):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(2, len(data))] = rng.randrange(256)
        if attempt % 10 == 0:
            data = data[: rng.randrange(4, len(data))]
        yield bytes(data)


@pytest.mark.parametrize("layer", ["zip", "gzip", "tar"])
def test_random_damage_never_escapes_as_a_raw_exception(tmp_path: Path, layer: str) -> None:
    files = [("pkg/manifest.json", b'{"name": "x"}' * 20), ("pkg/café.sh", b"echo hi\n" * 50)]
    if layer == "zip":
        original = make_zip(tmp_path / "a.zip", files).read_bytes()
    else:
        original = tar_bytes([tar_dir("pkg"), *(tar_file(n, d) for n, d in files)])
        original = gzip.compress(original) if layer == "gzip" else original
    kind = "zip" if layer == "zip" else "tar.gz"
    archive = tmp_path / "damaged"
    for attempt, data in enumerate(damaged_copies(original, layer, 300)):
        archive.write_bytes(gzip.compress(data) if layer == "tar" else data)
        target = tmp_path / f"t{attempt}"
        target.mkdir()
        try:
            extract(archive, kind, target, Limits())
        except ArchiveError as error:
            assert error.code and error.message
            assert list(target.iterdir()) == []


# -- staging and swapping trees --------------------------------------------------------


def make_tree(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(content)
    return path


def test_staging_dir_is_hidden_fresh_and_inside_parent(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    first, second = staging_dir(plugins), staging_dir(plugins)
    assert first != second
    for folder in (first, second):
        assert folder.parent == plugins
        assert folder.is_dir()
        assert folder.name.startswith(STAGING_PREFIX)
        assert list(folder.iterdir()) == []


def test_install_tree_into_new_scope(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    source = make_tree(staging_dir(plugins) / "package", "new")
    destination = plugins / "@acme" / "widget"
    journal = install_tree(source, destination)
    assert journal.name.startswith(NEW_PREFIX) and not replaced(journal)
    assert (destination / "manifest.json").read_text() == "new"
    assert not source.exists()
    accept_tree(journal)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["widget"]


def test_install_tree_swaps_and_restore_tree_restores(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    destination = make_tree(plugins / "widget", "old")
    source = make_tree(staging_dir(plugins) / "package", "new")

    backup = install_tree(source, destination)
    assert backup.parent == plugins
    assert backup.name.startswith(BACKUP_PREFIX) and replaced(backup)
    assert (destination / "manifest.json").read_text() == "new"
    assert (backup / "manifest.json").read_text() == "old"

    restore_tree(backup, destination)
    assert (destination / "manifest.json").read_text() == "old"
    assert not backup.exists()
    assert [p.name for p in plugins.iterdir() if p.name.startswith(BACKUP_PREFIX)] == []


def test_restore_tree_of_a_new_install_removes_it(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    source = make_tree(tmp_path / "src", "new")
    destination = plugins / "@acme" / "widget"
    restore_tree(install_tree(source, destination), destination)
    assert not destination.exists()
    assert not destination.parent.exists()  # the emptied @scope folder too
    clean_staging(plugins)
    assert list(plugins.iterdir()) == []


def test_install_tree_puts_the_backup_back_if_the_move_fails(tmp_path: Path) -> None:
    destination = make_tree(tmp_path / "plugins" / "widget", "old")
    with pytest.raises(FileNotFoundError):
        install_tree(tmp_path / "missing", destination)
    assert (destination / "manifest.json").read_text() == "old"
    assert [p.name for p in destination.parent.iterdir()] == ["widget"]


def test_clean_staging_keeps_only_accepted_installs(tmp_path: Path) -> None:
    """A crash at any point, checking the new tree included, leaves the last accepted."""
    plugins = tmp_path / "plugins"
    make_tree(plugins / "kept", "kept")
    make_tree(plugins / "@acme" / "kept", "kept")
    leftovers = [staging_dir(plugins), staging_dir(plugins / "@acme")]
    (leftovers[0] / "half.txt").write_text("half an extraction")

    # accepted: the new trees stay
    accept_tree(install_tree(make_tree(tmp_path / "n1", "new"), plugins / "done"))
    accept_tree(install_tree(make_tree(tmp_path / "n2", "newer"), plugins / "done"))
    # a crash while a replacement was checked: the old tree comes back
    checking = install_tree(make_tree(tmp_path / "n3", "broken"), make_tree(plugins / "c", "old"))
    # a crash while a new plugin was checked: it goes
    fresh = install_tree(make_tree(tmp_path / "n4", "broken"), plugins / "@acme" / "fresh")
    # a crash between the two renames: only the backups are left
    interrupted = install_tree(make_tree(tmp_path / "n5", "new"), make_tree(plugins / "w", "old"))
    scoped = install_tree(
        make_tree(tmp_path / "n6", "new"), make_tree(plugins / "@acme" / "w", "old")
    )
    _crash_before_second_rename(plugins / "w", plugins / "@acme" / "w")
    # a crash in the middle of accepting: the backup was hidden, then half deleted
    half = install_tree(make_tree(tmp_path / "n7", "new"), make_tree(plugins / "h", "old"))
    hidden = plugins / f"{STAGING_PREFIX}{'0' * 32}"
    half.rename(hidden)
    (hidden / "manifest.json").unlink()

    clean_staging(plugins)

    assert not any(p.exists() for p in (*leftovers, checking, fresh, interrupted, scoped, hidden))
    assert (plugins / "done" / "manifest.json").read_text() == "newer"
    assert (plugins / "c" / "manifest.json").read_text() == "old"
    assert (plugins / "w" / "manifest.json").read_text() == "old"
    assert (plugins / "@acme" / "w" / "manifest.json").read_text() == "old"
    assert (plugins / "h" / "manifest.json").read_text() == "new"
    assert (plugins / "kept" / "manifest.json").read_text() == "kept"
    assert sorted(p.name for p in plugins.iterdir()) == ["@acme", "c", "done", "h", "kept", "w"]
    assert sorted(p.name for p in (plugins / "@acme").iterdir()) == ["kept", "w"]


def _crash_before_second_rename(*destinations: Path) -> None:
    """Leave only the backups behind, as if the process died between the two renames."""
    for destination in destinations:
        shutil.rmtree(destination)


def test_clean_staging_without_a_folder_is_a_no_op(tmp_path: Path) -> None:
    clean_staging(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
