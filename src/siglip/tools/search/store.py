"""Embeddings of image files kept in SQLite, one transaction per batch, so that work survives a crash.

A `VectorStore` is one SQLite file holding, per image path, the file's size and modification time when it was
embedded and its normalised embedding (float32), plus the files that could not be read and why. It is the
journal of `siglip embed` (an interrupted run resumes from it) and the record half of a search index.

Every write is a single transaction: a process killed at any moment (even `kill -9`) leaves the batches it
committed and none of the one it was writing. A path is stored at most once (a UNIQUE key); a changed file
gets a new row id, and ids are never reused (AUTOINCREMENT), which lets derived vector indexes catch up from
the ids alone.

A file that could not be read is retried when its size, modification time or status-change time changed (a
`chmod` that makes it readable changes the last). A store on read-only media (or in a folder the user cannot
write) is opened read-only: it answers every read, and a write is a `StoreError` saying why. Every SQLite
failure (a full disk, a damaged page) is a `StoreError` naming the file and what to do.

Each embedded row may carry its metadata (`siglip.tools.metadata`: date taken, camera, size, ...) in a
`metadata` table keyed by the row's id, written in the row's transaction and deleted with it (a trigger);
`matching_ids` runs a compiled `--where` filter over it. Rows of stores made before it have none
(`missing_metadata`) until `record_metadata` fills them in.

A derived index that holds the vectors itself takes them over (`release_vectors`), so that a
search index stores each vector once: the rows keep their path and file state.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ...errors import StoreError
from ..inputs.files import os_error_reason
from ..metadata import SCHEMA, STORED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    ctime_ns INTEGER NOT NULL DEFAULT -1
);
"""
_ADD_CTIME = "ALTER TABLE skipped ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT -1"  # stores made before it
_SQL_TYPES = {"text": "TEXT", "date": "TEXT", "int": "INTEGER", "bool": "INTEGER", "float": "REAL"}
# the metadata of each embedded row (`siglip.tools.metadata`), made in stores from before it on first opening;
# a row without one was embedded before metadata existed (`missing_metadata`)
_METADATA_TABLE = (
    "CREATE {temp} TABLE IF NOT EXISTS metadata (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{name} {_SQL_TYPES[SCHEMA[name]]}" for name in STORED)
    + ")"
)
_METADATA_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS metadata_follows AFTER DELETE ON images "
    "BEGIN DELETE FROM metadata WHERE id = old.id; END"
)
_INSERT_METADATA = (
    f"INSERT OR REPLACE INTO metadata (id, {', '.join(STORED)}) "
    f"SELECT id, {', '.join('?' * len(STORED))} FROM images WHERE path = ?"
)
_CHUNK = 4096  # rows per query when streaming vectors out


def stored_path(path: str | os.PathLike) -> str:
    """How an image's path is stored, by every writer and importer (`siglip embed --out`, `siglip index`,
    `--from-embeddings`): absolute and normalised (`os.path.abspath`: against the working directory, `.` and
    `..` resolved), so that one file has one name whatever directory a command ran in; symbolic links are
    kept as named (a removed link then drops out of an index, where its target would stay). A URI
    (`s3://...`) is kept as it is; a WebDataset sample (`SHARD:KEY`) gets its shard's absolute path."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


@dataclass(frozen=True)
class FileState:
    """A file as last seen: a changed size or modification time means it must be embedded again; for a file
    that could not be read, a changed status-change time (`ctime_ns`: permissions, owner) too."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int = -1

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileState:
        """The current state of `path` (raises `OSError` when it cannot be stat-ed)."""
        st = os.stat(path)
        return cls(os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Seen(NamedTuple):
    """A file as a store last saw it: embedded, or recorded as unreadable."""

    size: int
    mtime_ns: int
    embedded: bool
    ctime_ns: int = -1

    def current(self, file: FileState) -> bool:
        """Whether `file` is still as seen: same size and modification time, and for an unreadable file the
        same status-change time (a `chmod` may have made it readable)."""
        same = (self.size, self.mtime_ns) == (file.size, file.mtime_ns)
        return same and (self.embedded or self.ctime_ns == file.ctime_ns)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _sqlite_errors(method: _Method) -> _Method:
    """Turn the SQLite errors of a `VectorStore` method (or generator) into a `StoreError` naming the file."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: VectorStore, *args: Any, **kwargs: Any) -> Any:
            with self._translated_errors():
                yield from method(self, *args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: VectorStore, *args: Any, **kwargs: Any) -> Any:
        with self._translated_errors():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


START_OVER = "delete it (with its -wal and -shm files) and run the command again"


def store_error(path: Path, err: sqlite3.Error, start_over: str = START_OVER) -> StoreError:
    """A `StoreError` for an SQLite failure on the store at `path`: what happened and what to do
    (`start_over`: how to start again from nothing, for a damaged store)."""
    text = str(err)
    if "disk is full" in text or "disk I/O error" in text:
        return StoreError(
            f"cannot write '{path}' ({text}): free some disk space and run the command again; the work "
            "committed so far is kept"
        )
    if "malformed" in text or "not a database" in text or "encrypted" in text:
        return StoreError(f"'{path}' is not a siglip store, or it is damaged ({text}): {start_over}")
    if "readonly" in text:
        return StoreError(f"'{path}' is read-only ({text}): copy it to a writable place to change it")
    if "locked" in text or "busy" in text:
        return StoreError(f"'{path}' is being written by another process ({text}): wait for it to finish")
    return StoreError(
        f"'{path}' cannot be used ({text}): it may be damaged, or not a siglip store; if so, {start_over}"
    )


def _create_tables(
    db: sqlite3.Connection, path: Path, model: str | None, dims: int | None, meta: dict[str, str]
) -> None:
    """Make a store's tables in `db` (inside the caller's transaction, so a store is never half made)."""
    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"'{path}' is an SQLite database of something else, not a siglip store")
    if model is None or dims is None:
        raise StoreError(f"'{path}' is empty; creating a store needs a model and its dims")
    for statement in _SCHEMA.split(";"):
        db.execute(statement)
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("model", model), ("dims", str(dims)), ("generation", "0"), *meta.items()],
    )


class VectorStore:
    """Image paths, their file state and normalised embeddings in one SQLite file (see the module doc).

    Opening an existing store checks that it was made with `model` (when given); creating one needs `model`
    and `dims`, and writes `meta` with them (in the transaction that creates the store). An existing store
    that cannot be written (read-only media or permissions) is opened read-only (`read_only`). `start_over`
    is the advice errors give for a damaged store (how to start again from nothing).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: str | None = None,
        dims: int | None = None,
        *,
        meta: dict[str, str] | None = None,
        start_over: str = START_OVER,
    ) -> None:
        self.path = Path(path)
        self.start_over = start_over
        if self.path.is_dir():
            raise StoreError(f"'{self.path}' is a folder, not a store file: give another path")
        if not self.path.exists():
            if model is None or dims is None:
                raise StoreError(f"no store at '{self.path}'")
            self._create_whole(model, dims, meta or {})
        self.read_only = self.path.exists() and not _writable(self.path)
        try:
            if self.read_only:  # immutable: SQLite then needs no -wal/-shm files, which it could not create
                uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?immutable=1"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
                stored = dict(self._db.execute("SELECT key, value FROM meta"))
                # a read-only store from before metadata: an empty table in memory, so every row lacks it
                if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'metadata'").fetchone():
                    self._db.execute(_METADATA_TABLE.format(temp="TEMP"))
            else:
                # transactions are explicit; a writer waits up to 10 minutes for another's (a long vector sync)
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=600)
                self._db.execute(
                    "PRAGMA journal_mode=WAL"
                )  # readers (search) do not wait for a running build
                self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process, and fast
                with self.transaction():
                    if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                        _create_tables(self._db, self.path, model, dims, meta or {})  # an empty file
                    columns = {row[1] for row in self._db.execute("PRAGMA table_info(skipped)")}
                    if "ctime_ns" not in columns:
                        self._db.execute(_ADD_CTIME)
                    self._db.execute(_METADATA_TABLE.format(temp=""))
                    self._db.execute(_METADATA_TRIGGER)
                    stored = dict(self._db.execute("SELECT key, value FROM meta"))
            # filters (`siglip.tools.search.filters`) match text as Python does, not SQLite's ASCII-only lower()
            self._db.create_function("casefold", 1, _casefold, deterministic=True)
        except sqlite3.Error as err:
            raise store_error(self.path, err, start_over) from err
        if model is not None and model != stored["model"]:
            raise StoreError(
                f"'{self.path}' holds embeddings of model '{stored['model']}', not '{model}': use that model, "
                "or another path for this one"
            )
        self.model: str = stored["model"]
        self.dims: int = int(stored["dims"])

    def _create_whole(self, model: str, dims: int, meta: dict[str, str]) -> None:
        """Make a new store under a name of this process's own, then link it into place: a run killed meanwhile
        leaves no empty file that would read as a store, and of two runs creating one store the first link
        wins (the other's is dropped, and both open the winner)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):  # a killed run's, never replayed
            leftover.unlink(missing_ok=True)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("BEGIN")
                _create_tables(db, self.path, model, dims, meta)
                db.execute("COMMIT")
            finally:
                db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links (FAT, some network shares): a plain rename
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except sqlite3.Error as err:
            raise store_error(self.path, err, self.start_over) from err
        finally:
            tmp.unlink(missing_ok=True)

    # --- transactions --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise store_error(self.path, err, self.start_over) from err

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one transaction holding the store's write lock (other writers, other processes
        included, wait for it; readers do not): committed at the end, rolled back on an exception."""
        self.check_writable()
        with self._translated_errors():
            self._db.execute("BEGIN IMMEDIATE")  # take the write lock now: writers queue, never interleave
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def check_writable(self) -> None:
        """Raise a `StoreError` when the store was opened read-only."""
        if self.read_only:
            raise StoreError(
                f"'{self.path}' is on read-only media or in a folder you cannot write: it can be searched, "
                "not changed; copy it to a writable place to update it"
            )

    def rename_model(self, model: str) -> None:
        """Record that the store's model is now called `model` (a model folder that moved)."""
        self.set_meta("model", model)
        self.model = model

    def _bump_generation(self) -> None:
        """Count a change; called last inside every write transaction (derived indexes compare it)."""
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    @property
    @_sqlite_errors
    def generation(self) -> int:
        """Number of committed changes so far."""
        return int(self.get_meta("generation"))

    @_sqlite_errors
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value, in the running transaction if there is one."""
        with contextlib.nullcontext() if self._db.in_transaction else self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- writing -------------------------------------------------------------------------------------------
    def record(
        self,
        done: Sequence[FileState],
        vectors: np.ndarray,
        failed: Sequence[tuple[FileState, str]] = (),
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Store the embeddings of `done` (rows of `vectors`), their `metadata` (`read_metadata` of each, when
        given) and the `(file, reason)` of unreadable files.

        One transaction: an earlier entry of the same path (the file changed) is replaced, never duplicated.
        """
        if len(done) != len(vectors):
            raise ValueError(f"{len(done)} files but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(done) and vectors.shape[1] != self.dims:
            raise StoreError(f"'{self.path}' holds {self.dims}-d embeddings, got {vectors.shape[1]}-d")
        rows = [(f.path, f.size, f.mtime_ns, v.tobytes()) for f, v in zip(done, vectors, strict=True)]
        with self.transaction():
            self._replace(
                "INSERT INTO images (path, size, mtime_ns, vector) VALUES (?, ?, ?, ?)", rows, done, failed
            )
            self._insert_metadata(done, metadata)

    def reserve_ids(self, count: int) -> int:
        """Reserve `count` row ids for `record_released`, in a transaction of their own, and return the first.

        Committed before the rows that use them: a transaction that adds rows and saves their vectors in a
        derived index may be killed after the index file is replaced and before it commits, and the ids that
        file then holds must never name other rows.
        """
        with self.transaction():
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
            first = (row[0] if row else 0) + 1
            self._db.execute("DELETE FROM sqlite_sequence WHERE name = 'images'")
            self._db.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('images', ?)", (first + count - 1,)
            )
        return first

    def record_released(
        self,
        done: Sequence[FileState],
        ids: Sequence[int],
        failed: Sequence[tuple[FileState, str]] = (),
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Store `done` under `ids` (from `reserve_ids`) without their vectors, which go straight to a derived
        index saved in the same (running) transaction, their `metadata` when given, and the `(file, reason)`
        of unreadable files. An earlier entry of the same path is replaced, as by `record`."""
        if not self._db.in_transaction:
            raise StoreError(
                "record_released must run inside the transaction that saves the vectors elsewhere"
            )
        rows = [(int(i), f.path, f.size, f.mtime_ns) for i, f in zip(ids, done, strict=True)]
        self._replace(
            "INSERT INTO images (id, path, size, mtime_ns, vector) VALUES (?, ?, ?, ?, x'')",
            rows,
            done,
            failed,
        )
        self._insert_metadata(done, metadata)

    def _insert_metadata(self, done: Sequence[FileState], metadata: Sequence[dict[str, Any]] | None) -> None:
        """In the running transaction: the metadata of the rows of `done` (nothing when None)."""
        if metadata is None:
            return
        if len(metadata) != len(done):
            raise ValueError(f"{len(done)} files but {len(metadata)} metadata")
        self._db.executemany(
            _INSERT_METADATA,
            [(*(m.get(name) for name in STORED), f.path) for f, m in zip(done, metadata, strict=True)],
        )

    def record_metadata(self, metadata: dict[str, dict[str, Any]]) -> None:
        """Store the metadata (path -> `read_metadata`) of rows embedded without it, in one transaction."""
        with self.transaction():
            self._db.executemany(
                _INSERT_METADATA, [(*(m.get(name) for name in STORED), p) for p, m in metadata.items()]
            )  # the vectors are unchanged: no new generation, no rewrite of a derived index

    def _replace(
        self,
        insert: str,
        rows: list[tuple],
        done: Sequence[FileState],
        failed: Sequence[tuple[FileState, str]],
    ) -> None:
        """In the running transaction: drop the earlier entries of these paths, `insert` the `rows` of `done`,
        record the unreadable files, and count the change."""
        paths = [(f.path,) for f in (*done, *(f for f, _ in failed))]
        self._db.executemany("DELETE FROM images WHERE path = ?", paths)
        self._db.executemany("DELETE FROM skipped WHERE path = ?", paths)
        self._db.executemany(insert, rows)
        self._db.executemany(
            "INSERT INTO skipped (path, size, mtime_ns, reason, ctime_ns) VALUES (?, ?, ?, ?, ?)",
            [(f.path, f.size, f.mtime_ns, r, f.ctime_ns) for f, r in failed],
        )
        self._bump_generation()

    def remove(self, paths: Iterable[str]) -> int:
        """Forget `paths` (embedded or skipped) in one transaction (the running one if there is one); returns
        how many embeddings went."""
        rows = [(p,) for p in paths]
        if not rows:
            return 0
        with contextlib.nullcontext() if self._db.in_transaction else self.transaction():
            # rowcount: the rows these statements deleted, not those their trigger deleted from `metadata`
            removed = self._db.executemany("DELETE FROM images WHERE path = ?", rows).rowcount
            self._db.executemany("DELETE FROM skipped WHERE path = ?", rows)
            self._bump_generation()
        return removed

    # --- reading -------------------------------------------------------------------------------------------
    @_sqlite_errors
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    @_sqlite_errors
    def states(self) -> dict[str, Seen]:
        """path -> `Seen` of every file seen, embedded or skipped."""
        states = {
            p: Seen(s, m, True) for p, s, m in self._db.execute("SELECT path, size, mtime_ns FROM images")
        }
        query = "SELECT path, size, mtime_ns, ctime_ns FROM skipped"
        states.update((p, Seen(s, m, False, c)) for p, s, m, c in self._db.execute(query))
        return states

    def pending(self, files: Iterable[FileState]) -> list[FileState]:
        """The files not yet stored (embedded or skipped) in their current state, in the given order."""
        states = self.states()
        return [f for f in files if f.path not in states or not states[f.path].current(f)]

    @_sqlite_errors
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of the files that could not be read, by path."""
        return self._db.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall()

    @_sqlite_errors
    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Row ids of the embeddings with `start` <= id < `stop` (default: all), int64, ascending."""
        query = "SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id"
        ids = self._db.execute(query, (int(start), 2**63 - 1 if stop is None else int(stop))).fetchall()
        return np.array([i for (i,) in ids], dtype=np.int64)

    @_sqlite_errors
    def vectors_from(self, first_id: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks of the rows with id >= `first_id` that still hold their vector, by id."""
        cursor = self._db.execute(
            "SELECT id, vector FROM images WHERE id >= ? AND length(vector) > 0 ORDER BY id", (first_id,)
        )
        while rows := cursor.fetchmany(_CHUNK):
            yield np.array([i for i, _ in rows], dtype=np.int64), self._unpack([v for _, v in rows])

    @_sqlite_errors
    def released_ids(self) -> np.ndarray:
        """Row ids whose vector was handed over to a derived index (`release_vectors`), ascending."""
        ids = self._db.execute("SELECT id FROM images WHERE length(vector) = 0 ORDER BY id").fetchall()
        return np.array([i for (i,) in ids], dtype=np.int64)

    @_sqlite_errors
    def release_vectors(self) -> int:
        """Drop the vectors of all rows, in the running transaction: call it once a derived index that holds
        them is safely on disk, so that each vector is stored once. Rows keep their path and file state.
        Returns the bytes released (see `compact`)."""
        if not self._db.in_transaction:
            raise StoreError(
                "release_vectors must run inside the transaction that saved the vectors elsewhere"
            )
        released = self._db.execute("SELECT COALESCE(SUM(length(vector)), 0) FROM images").fetchone()[0]
        self._db.execute("UPDATE images SET vector = x'' WHERE length(vector) > 0")
        return released

    @_sqlite_errors
    def compact(self) -> None:
        """Rewrite the file without its free space (VACUUM), e.g. after releasing most of its vectors."""
        self._db.execute("VACUUM")

    @_sqlite_errors
    def paths_of(self, ids: Iterable[int]) -> dict[int, str]:
        """id -> path for the given row ids (those that still exist)."""
        ids = [int(i) for i in ids]
        found: dict[int, str] = {}
        for start in range(0, len(ids), 500):  # stays under SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT id, path FROM images WHERE id IN ({marks})", chunk))
        return found

    @_sqlite_errors
    def in_order(self, paths: Sequence[str]) -> Iterator[tuple[list[str], np.ndarray]]:
        """(paths, vectors) chunks of the stored embeddings of `paths`, in that order (absent ones left out)."""
        with self.transaction():
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (pos INTEGER PRIMARY KEY, path TEXT)")
            self._db.execute("DELETE FROM wanted")
            self._db.executemany("INSERT INTO wanted (path) VALUES (?)", [(p,) for p in paths])
        cursor = self._db.execute(
            "SELECT w.path, i.vector FROM wanted w JOIN images i ON i.path = w.path ORDER BY w.pos"
        )
        while rows := cursor.fetchmany(_CHUNK):
            yield [p for p, _ in rows], self._unpack([v for _, v in rows])

    @_sqlite_errors
    def missing_metadata(self) -> list[str]:
        """Paths of the rows embedded without metadata (before it was recorded), by path."""
        query = "SELECT path FROM images WHERE id NOT IN (SELECT id FROM metadata) ORDER BY path"
        return [p for (p,) in self._db.execute(query)]

    @_sqlite_errors
    def count_missing_metadata(self) -> int:
        """How many rows have no metadata: a difference of counts, as every metadata row belongs to a row
        (written with it, deleted with it), cheaper than listing them (`missing_metadata`)."""
        query = "SELECT (SELECT COUNT(*) FROM images) - (SELECT COUNT(*) FROM metadata)"
        return self._db.execute(query).fetchone()[0]

    @_sqlite_errors
    def metadata_of(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> metadata (`SCHEMA`'s fields, path included) of the given row ids that have it."""
        ids = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        columns = ", ".join(f"m.{name}" for name in STORED)
        for start in range(0, len(ids), 500):  # stays under SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            query = (
                f"SELECT i.id, i.path, {columns} FROM images i JOIN metadata m ON m.id = i.id "
                f"WHERE i.id IN ({','.join('?' * len(chunk))})"
            )
            for row in self._db.execute(query, chunk):
                found[row[0]] = _typed(dict(zip(("path", *STORED), row[1:], strict=True)))
        return found

    @_sqlite_errors
    def metadata_by_path(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """path -> metadata (without the path) of the given paths that have it."""
        found: dict[str, dict[str, Any]] = {}
        columns = ", ".join(f"m.{name}" for name in STORED)
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            query = (
                f"SELECT i.path, {columns} FROM images i JOIN metadata m ON m.id = i.id "
                f"WHERE i.path IN ({','.join('?' * len(chunk))})"
            )
            for path, *values in self._db.execute(query, chunk):
                found[path] = _typed(dict(zip(STORED, values, strict=True)))
        return found

    @_sqlite_errors
    def matching_ids(self, where: str, params: Sequence[Any]) -> np.ndarray:
        """Row ids (int64, ascending) whose metadata satisfies `where`, an SQL condition over `i.path` and
        `m.<field>` with `params` bound to its placeholders, as `siglip.tools.search.filters` compiles them."""
        query = f"SELECT i.id FROM images i JOIN metadata m ON m.id = i.id WHERE {where} ORDER BY i.id"
        return np.array([i for (i,) in self._db.execute(query, tuple(params))], dtype=np.int64)

    def _unpack(self, blobs: list[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.dims)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def _typed(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata as read back from SQLite, booleans as bool again (SQLite keeps 0 and 1)."""
    for name, kind in SCHEMA.items():
        if kind == "bool" and meta.get(name) is not None:
            meta[name] = bool(meta[name])
    return meta


def _writable(path: Path) -> bool:
    """Whether the store file and its folder (where SQLite keeps its -wal and -shm files) can be written."""
    folder = path.parent
    mounted_read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    return not mounted_read_only and os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then move it over `path` in one step.

    Readers see the old file or the new one, never a half-written one, even if the process is killed.
    """
    replace_together({path: write})


def replace_together(writes: dict[Path, Callable[[Path], object]]) -> None:
    """`replace_atomically` for files that belong together (data and its manifest): each `write(tmp)` fills
    a temporary file, and only once all are written are they moved into place, in the order given (so the
    last one marks the set complete). A failed write (a full disk) leaves every file as it was, and its
    `OSError` names the file being written rather than its temporary stand-in.
    """
    temporary = {path: path.with_name(f".{path.name}.tmp") for path in writes}
    try:
        for path, write in writes.items():
            tmp = temporary[path]
            try:
                write(tmp)
            except OSError as err:
                # pyarrow's and a closing file's errors name no file (or the temporary one): name the output
                if err.errno is None or err.filename not in (None, str(tmp), tmp):
                    raise
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def pending_files(store: VectorStore, files: Sequence[str | FileState]) -> list[FileState]:
    """The files `store` lacks in their current state; those that vanished since listing are recorded skipped.
    A `FileState` given is taken as the file's current state (the samples of a shard carry the shard's)."""
    states, vanished = [], []
    for path in files:
        if isinstance(path, FileState):
            states.append(path)
            continue
        try:
            states.append(FileState.of(path))
        except OSError as err:
            vanished.append((FileState(path, -1, -1), f"cannot be read: {os_error_reason(err)}"))
    if vanished:
        store.record([], np.empty((0, store.dims), np.float32), vanished)
    return store.pending(states)
