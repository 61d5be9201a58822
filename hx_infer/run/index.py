"""OUTPUT/hx-index.sqlite: which input made the outputs of each name, so that resume skips only
outputs made from the same photo.

Outputs are named after their input (INPUT/2019/a.jpg -> OUTPUT/alpha/2019/a.png), so names alone
cannot tell whose outputs are there: a second run from another folder whose photos share those
names, or a photo edited since, would be skipped as done. Each input whose outputs were all
written is recorded by its output name, with its path, size and mtime, and planning asks
`verdict`:

    no record (an OUTPUT made before the index, or the record lost to a kill): skip, as before
    the same path, same size and mtime: skip
    the same path, changed since: redo (the photo was edited)
    another path of the same size: skip (the same photo, moved or copied)
    another path of another size: fail, naming the input that made the outputs

Each record also keeps the warning its decoder left (Job.warning: stray bytes before a JPEG's
end marker), or NULL, so that a rerun lists the warnings of the photos it skips: the report of
the run that made their outputs may never have been written (killed), and is replaced by the
rerun's. An index made before warnings were kept gains the column when opened; its records hold
none (NULL), and a photo skipped by name alone (no record) has none either.

SQLite (the standard library's) because the index must answer one name at a time for archives of
millions without being read whole. Names are stored as bytes: a Linux name need not be UTF-8.
Records are committed in transactions of COMMIT_EVERY, so a kill loses at most that many, which
then fall under "no record"; a record with a warning is committed at once (warnings are few),
so a kill loses only those whose outputs were written but not yet told to the index. Used from
one thread (the one that collects outcomes), under OUTPUT's lock (no other process alters the
table meanwhile).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..errors import ConfigError
from ..io.video import is_video_name
from ..report import printable

INDEX_NAME = "hx-index.sqlite"
COMMIT_EVERY = 500
SKIP, REDO = "skip", "redo"


def index_key(src: Path, rel: Path) -> bytes:
    """The outputs' name of an input: its place below OUTPUT/<kind> without the suffix (a.jpg and
    a.png share one), photos and videos apart (a.jpg -> a.png, a.mp4 -> a.mp4 do not collide)."""
    kind = b"video:" if is_video_name(src.name) else b"photo:"
    return kind + os.fsencode(rel.with_suffix("").as_posix())


class OutputIndex:
    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / INDEX_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("CREATE TABLE IF NOT EXISTS made (name BLOB PRIMARY KEY, source BLOB NOT NULL, "
                             "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, warning TEXT)")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(made)")}
        except sqlite3.Error as e:
            raise ConfigError(f"{self.path}: cannot open the index of what made OUTPUT's files ({e}); "
                              f"remove it (resume then goes by names alone), or use another OUTPUT") from None
        self._pending = 0
        self._broken = False  # a write failed (disk full): stop recording; resume goes by names
        if "warning" not in columns:  # made before warnings were kept
            try:
                self._db.execute("ALTER TABLE made ADD COLUMN warning TEXT")
                columns.add("warning")
            except sqlite3.Error:  # read-only, disk full: its records are still read, none written
                self._broken = True
        self._select = ("SELECT source, size, mtime_ns, " + ("warning" if "warning" in columns else "NULL")
                        + " FROM made WHERE name = ?")

    def verdict(self, src: Path, rel: Path) -> tuple[str, str | None]:
        """(SKIP, the warning recorded with its outputs or None), (REDO, None), or (a failure
        reason, None), for an input all of whose outputs exist."""
        try:
            row = self._db.execute(self._select, (index_key(src, rel),)).fetchone()
        except sqlite3.Error:
            row = None
        if row is None:
            return SKIP, None
        source, size, mtime_ns, warning = row
        try:
            st = os.stat(src)
        except OSError:
            return REDO, None  # reading it will fail it, with the reason
        if source == os.fsencode(os.path.abspath(src)):
            return (SKIP, warning) if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) else (REDO, None)
        if st.st_size == size:
            return SKIP, warning  # the same photo moved or copied: its outputs, and so its warning
        return (f"its outputs were made from {os.fsdecode(source)}, another file, in an earlier run; "
                f"use --overwrite to make them from this one, or another OUTPUT"), None

    def record(self, src: Path, rel: Path, warning: str | None = None) -> None:
        """`src` has just had all its outputs written; `warning`: its decoder's (Job.warning), or
        None, replacing what an earlier run recorded."""
        try:
            st = os.stat(src)
        except OSError:
            return  # gone meanwhile: nothing to vouch for
        if self._broken:
            return
        try:
            if self._pending == 0:
                self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO made (name, source, size, mtime_ns, warning) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (index_key(src, rel), os.fsencode(os.path.abspath(src)), st.st_size, st.st_mtime_ns,
                              None if warning is None else printable(warning)))  # printable: valid UTF-8 text
        except sqlite3.Error:
            self._broken = True
            return
        self._pending += 1
        if self._pending >= COMMIT_EVERY or warning is not None:
            self.commit()

    def commit(self) -> None:
        if self._pending and not self._broken:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._broken = True
        self._pending = 0

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()
