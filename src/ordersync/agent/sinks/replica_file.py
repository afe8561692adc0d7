"""Faults of a SQLite replica's file, each named in one line: deleted or replaced, read-only,
disk full, I/O error.

SQLite alone reports them badly. A file deleted under an open connection takes writes into the
unlinked inode until the connection closes; a full disk rolls the transaction back by itself,
so the caller's own ROLLBACK then fails with "cannot rollback - no transaction is active" and
hides the cause. So the writer checks the file before each page (a stat and a statvfs, a few
microseconds) and names SQLite's result codes.
"""

from __future__ import annotations

import os
import sqlite3

from ordersync.agent.errors import SinkError


class ReplicaFault(SinkError):
    """The replica's file cannot take writes; the page was not applied (the cursor did not
    move) and the next cycle tries again."""


class ReplicaFile:
    """The file a SQLite replica was opened at, as it was then."""

    def __init__(self, path: str) -> None:
        self.path = path
        stat = os.stat(path)
        self._identity = (stat.st_dev, stat.st_ino)

    def check(self) -> None:
        """ReplicaFault if the file is gone, replaced, or on a read-only file system."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise ReplicaFault(
                f"the replica {self.path} was deleted while the agent ran; nothing more is "
                "written (restore the file, or restart the agent to start a new replica)"
            ) from None
        except OSError as exc:
            raise ReplicaFault(f"the replica {self.path} cannot be reached: {exc}") from exc
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise ReplicaFault(
                f"the replica {self.path} was deleted or replaced while the agent ran; nothing "
                "more is written (restart the agent to write the new file)"
            )
        if os.statvfs(self.path).f_flag & os.ST_RDONLY or not os.access(self.path, os.W_OK):
            raise read_only(self.path)


def read_only(path: str) -> ReplicaFault:
    return ReplicaFault(
        f"the replica {path} is read-only (its file or file system no longer takes writes)"
    )


def named(path: str, exc: sqlite3.Error) -> SinkError | None:
    """The fault SQLite's result code stands for, if it is one of the file's."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_FULL:
        return ReplicaFault(f"the disk holding the replica {path} is full ({exc})")
    if code == sqlite3.SQLITE_READONLY:
        return read_only(path)
    if code == sqlite3.SQLITE_IOERR:
        return ReplicaFault(f"the disk holding the replica {path} failed a read or write ({exc})")
    if code == sqlite3.SQLITE_CANTOPEN:
        return ReplicaFault(f"the replica {path} cannot be opened ({exc})")
    return None
