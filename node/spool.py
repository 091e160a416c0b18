"""Durable files: atomic writes, the spool layout, quarantine and the free-space guard.

Layout under ``storage.root`` (names defined once, here):

* ``spool/<study>/<series>/<sop>.dcm``: received instances (Part 10 files), UIDs sanitised.
* ``quarantine/<utc time>-<n>.dcm`` + ``.reason.txt``: inputs refused, kept with the reason.
* ``outbox/<series>/<revision>/``: analysis outputs (written by node.worker).

A file only ever appears under its final name complete and fsynced (``write_atomically``);
a crash leaves at most a ``*.tmp`` file, which start-up reconciliation removes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node.uids import sanitize_uid

SPOOL_DIR = "spool"
QUARANTINE_DIR = "quarantine"
OUTBOX_DIR = "outbox"
INCOMING_DIR = "incoming"  # partial receptions; emptied at start-up (never acknowledged)
TMP_SUFFIX = ".tmp"
INSTANCE_SUFFIX = ".dcm"
REASON_SUFFIX = ".reason.txt"

_tmp_counter = itertools.count()


class OutOfSpace(OSError):
    """Storing would leave less than the configured minimum free space (or the disk is full)."""


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (create, rename, unlink) in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and its missing parents, fsyncing each new entry's parent."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        fsync_dir(d.parent)


def write_atomically(path: Path, *chunks: bytes | memoryview) -> int:
    """Write ``chunks`` to ``path`` so that it is either absent/old or complete and durable.

    Temp file in the same directory, fsync, ``os.replace``, fsync of the directory. Returns
    the number of bytes written. On any error (ENOSPC included) the temp file is removed and
    the error propagates; an existing ``path`` is left untouched.
    """
    path = Path(path)
    directory = path.parent
    _makedirs_durable(directory)
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_tmp_counter)}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    written = 0
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
    return written


@dataclass(frozen=True)
class QuarantinedFile:
    path: Path
    reason_path: Path


class Spool:
    """The storage root's directories and the operations on them."""

    def __init__(self, root: Path, min_free_mb: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_mb) * 1024 * 1024
        self.spool_dir = self.root / SPOOL_DIR
        self.quarantine_dir = self.root / QUARANTINE_DIR
        self.outbox_dir = self.root / OUTBOX_DIR
        self.incoming_dir = self.root / INCOMING_DIR
        for d in (self.spool_dir, self.quarantine_dir, self.outbox_dir, self.incoming_dir):
            _makedirs_durable(d)
        self._q_counter = itertools.count()

    # -- free space ----------------------------------------------------------------------
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_free_space(self, needed_bytes: int) -> None:
        """Raise OutOfSpace if writing ``needed_bytes`` would go below ``min_free_mb``."""
        free = self.free_bytes()
        if free - needed_bytes < self.min_free_bytes:
            raise OutOfSpace(
                f"{free // (1024 * 1024)} MiB free, {needed_bytes} bytes needed, "
                f"storage.min_free_mb is {self.min_free_bytes // (1024 * 1024)}"
            )

    # -- instances -----------------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The spool path of an instance; every UID is sanitised (InvalidUID otherwise)."""
        return (
            self.spool_dir
            / sanitize_uid(study_uid, "StudyInstanceUID")
            / sanitize_uid(series_uid, "SeriesInstanceUID")
            / (sanitize_uid(sop_uid, "SOPInstanceUID") + INSTANCE_SUFFIX)
        )

    def series_dirs(self, series_uid: str) -> list[Path]:
        return [p for p in self.spool_dir.glob(f"*/{sanitize_uid(series_uid)}") if p.is_dir()]

    def iter_instance_files(self):
        """Every complete instance file in the spool (temp files excluded)."""
        yield from self.spool_dir.glob(f"*/*/*{INSTANCE_SUFFIX}")

    def commit_file(self, src: Path, dst: Path, fd: int | None = None) -> None:
        """Move a complete file written elsewhere on this filesystem to ``dst`` durably:
        fsync the file (through ``fd`` when the caller still holds it open for writing),
        ``os.replace``, fsync the destination directory."""
        if fd is not None:
            os.fsync(fd)
        else:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _makedirs_durable(dst.parent)
        os.replace(src, dst)
        fsync_dir(dst.parent)

    def remove_temp_files(self) -> int:
        """Remove ``*.tmp`` left by a crash mid-write and everything in incoming/ (partial
        receptions, never acknowledged). Start-up only. Returns the count."""
        count = 0
        for leftover in self.incoming_dir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                count += 1
        for base in (self.spool_dir, self.outbox_dir):
            for tmp in base.rglob(f"*{TMP_SUFFIX}"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    count += 1
        return count

    # -- quarantine ----------------------------------------------------------------------
    def quarantine(self, chunks: tuple[bytes | memoryview, ...], reason: str) -> QuarantinedFile:
        """Keep refused bytes under quarantine/ with the reason in a text file beside them."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{next(self._q_counter)}"
        data_path = self.quarantine_dir / f"{name}{INSTANCE_SUFFIX}"
        reason_path = self.quarantine_dir / f"{name}{REASON_SUFFIX}"
        write_atomically(reason_path, reason.encode("utf-8", "backslashreplace") + b"\n")
        write_atomically(data_path, *chunks)
        return QuarantinedFile(data_path, reason_path)

    def quarantine_file(self, src: Path, reason: str, fd: int | None = None) -> QuarantinedFile:
        """Move a received file (on this filesystem) into quarantine/ with its reason."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{next(self._q_counter)}"
        data_path = self.quarantine_dir / f"{name}{INSTANCE_SUFFIX}"
        reason_path = self.quarantine_dir / f"{name}{REASON_SUFFIX}"
        write_atomically(reason_path, reason.encode("utf-8", "backslashreplace") + b"\n")
        self.commit_file(src, data_path, fd)
        return QuarantinedFile(data_path, reason_path)

    # -- outbox --------------------------------------------------------------------------
    def outbox_path(self, series_uid: str, revision: int) -> Path:
        return self.outbox_dir / sanitize_uid(series_uid, "SeriesInstanceUID") / str(int(revision))

    # -- retention -----------------------------------------------------------------------
    def remove_series(self, series_uid: str, *, outbox: bool) -> None:
        for d in self.series_dirs(series_uid):
            shutil.rmtree(d, ignore_errors=True)
            fsync_dir(d.parent)
            try:
                d.parent.rmdir()  # the study dir, if now empty
            except OSError:
                pass
        if outbox:
            d = self.outbox_dir / sanitize_uid(series_uid)
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
                fsync_dir(self.outbox_dir)
