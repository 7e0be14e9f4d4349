"""Checkpoint cosigning over JetStream (ADR 0006, "Checkpoints are cosigned").

After each block every node publishes its own signed checkpoint note on the chain's SIGS stream.
Each node merges the signature lines of notes whose *text* equals its own checkpoint for that
height; once ``quorum()`` distinct trusted organisations have signed, the merged note is
*final*: no single node can have made it up. A verified note whose text differs is divergence
evidence (a conflict naming its signer) and is never merged.

The stream keeps its whole history, so a new or restarted node reads every note it missed.
Everything this node learns (its own notes, merged signatures, finals, conflicts, notes that
arrived before its own, and the stream position they reflect) lives in ``cosign.sqlite``. The
position is committed in the same SQLite transaction as the effects of the messages before it,
so a restart resumes right after the last message whose effects were kept; applying a message
twice changes nothing, so nothing depends on exactly-once delivery.

Threads: NATS runs on the Cosigner's own asyncio loop in a daemon thread, which is also the only
writer of the SQLite file. ``publish`` only validates and hands the note to that loop; reads
(``final``, ``wait_final``...) come from memory or a separate read connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from blokauto.crypto.note import Checkpoint, NoteSignature, format_note, known_keys, parse_note, verify_note
from blokauto.errors import BlokError, InputError, StorageError, VerificationError
from blokauto.ledger.chain import parse_block_extension
from blokauto.ordering.streams import ensure_stream

__all__ = ["Cosigner", "sigs_stream_name", "sigs_subject", "stream_id"]

log = logging.getLogger("blokauto.network.cosign")

DUPLICATE_WINDOW_S = 120.0      # as the tx stream: a republished note within it is stored once
START_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 5.0
IDLE_HEARTBEAT_S = 1.0          # an ordered consumer re-creates itself after two missed beats
KEYS_TTL_S = 1.0                # keys also refresh on every publish (i.e. after every commit)
CACHE_HEIGHTS = 4096            # heights kept in memory; older ones are read back from SQLite
MAX_BATCH_OPS = 2000            # writes per SQLite transaction during a long burst
MAX_SENDS_IN_FLIGHT = 256       # unacknowledged publishes of our own notes
PENDING_WINDOW = 10_000         # others' notes are kept this many heights below our newest own note
WAL_CHECKPOINT_S = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS own_checkpoints (
    height INTEGER PRIMARY KEY, note TEXT NOT NULL, merged TEXT NOT NULL, signers TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS final_checkpoints (
    height INTEGER PRIMARY KEY, note TEXT NOT NULL, signers TEXT NOT NULL, final_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint_conflicts (
    height INTEGER NOT NULL, signer TEXT NOT NULL, note TEXT NOT NULL, ours TEXT NOT NULL,
    seen_ms INTEGER NOT NULL, PRIMARY KEY (height, signer, note));
CREATE TABLE IF NOT EXISTS pending_notes (
    height INTEGER NOT NULL, note TEXT NOT NULL, PRIMARY KEY (height, note));
"""


def stream_id(chain: str) -> str:
    """The chain's short id in stream and subject names: first 16 hex digits of SHA-256(chain)."""
    return hashlib.sha256(chain.encode("utf-8")).hexdigest()[:16]


def sigs_stream_name(chain: str) -> str:
    return f"BLOKAUTO_{stream_id(chain)}_SIGS"


def sigs_subject(chain: str) -> str:
    return f"blokauto.{stream_id(chain)}.sig"


@dataclass(slots=True)
class _Height:
    """Our checkpoint for one height and the trusted signature lines merged onto it so far."""

    own: str                                   # our note, as our node signed it
    text: str
    lines: dict[tuple[str, bytes], str]        # (key name, key hash) -> verified signature line
    signers: tuple[str, ...] = ()
    final: bool = False
    published: bool = False


def _note_height(text: str, chain: str) -> int:
    """The block height a checkpoint text is for; refuses other chains and texts without a block line."""
    cp = Checkpoint.from_text(text)
    if cp.origin != chain:
        raise InputError(f"checkpoint is for chain {cp.origin!r}, not {chain!r}", code="wrong_origin")
    ext = parse_block_extension(cp.extensions)
    if ext is None:
        raise InputError("checkpoint has no block extension line", code="bad_checkpoint")
    return ext[0]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Cosigner:
    """Shares this node's checkpoint signature for every block and gathers the others' until a quorum signs."""

    def __init__(self, servers: list[str], chain: str, org_id: str, data_dir: Path, *,
                 keys: Callable[[], list[str]], quorum: Callable[[], int],
                 connect_options: dict[str, Any] | None = None, replicas: int | None = None) -> None:
        """``keys``/``quorum`` read the ledger state (``Node.checkpoint_keys``/``checkpoint_quorum``);
        ``replicas`` overrides min(3, len(servers)) when a node knows fewer URLs than the cluster has."""
        if not servers:
            raise InputError("a cosigner needs at least one nats server", code="bad_network_config")
        self.servers = list(servers)
        self.chain = chain
        self.org_id = org_id
        self.stream = sigs_stream_name(chain)
        self.subject = sigs_subject(chain)
        self._keys_fn = keys
        self._quorum_fn = quorum
        self._connect_options = dict(connect_options or {})
        self.replicas = replicas if replicas is not None else min(3, len(self.servers))

        # Shared with caller threads, guarded by _lock (the loop thread writes, others read).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._finals: OrderedDict[int, str] = OrderedDict()
        self._latest: tuple[int, str] | None = None
        self._heights: OrderedDict[int, _Height] = OrderedDict()
        self._accepting = False
        self._closed = False
        self._early: list[tuple[int, str]] = []

        # Loop-thread state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PushSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_slots: asyncio.Semaphore | None = None
        self._in_tx = False
        self._tx_ops = 0
        self._sub_gen = 0
        self._keys: list[str] | None = None
        self._known: Mapping[tuple[str, bytes], bytes] = {}
        self._trusted: frozenset[str] = frozenset()
        self._quorum = 1
        self._known_at = -1e9
        self._newly_final: list[tuple[int, str]] = []

        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "cosign.sqlite"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")      # see _checkpoint_wal
        self._db.executescript(_SCHEMA)
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._wal_db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='chain'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('chain', ?)", (chain,))
        if row is not None and row[0] != chain:
            for conn in (self._db, self._reader, self._wal_db):
                conn.close()
            raise StorageError(f"{path} belongs to chain {row[0]!r}, not {chain!r}", code="wrong_chain")
        row = self._db.execute("SELECT value FROM meta WHERE key='stream_seq'").fetchone()
        self._seq = int(row[0]) if row else 0
        self._saved_seq = self._seq
        self._max_own = self._db.execute("SELECT coalesce(max(height), -1) FROM own_checkpoints").fetchone()[0]
        row = self._db.execute("SELECT height, note FROM final_checkpoints ORDER BY height DESC LIMIT 1").fetchone()
        self._latest = (int(row[0]), str(row[1])) if row else None
        self.outvoted: dict[str, Any] | None = None    # set once a quorum signed another checkpoint than ours
        for (height,) in self._db.execute("SELECT DISTINCT height FROM checkpoint_conflicts ORDER BY height"):
            self._check_outvoted(int(height), max(1, int(quorum())), self._db)
            if self.outvoted is not None:
                break

    # ------------------------------------------------------------------ public API

    def start(self) -> Cosigner:
        """Connect, make sure the SIGS stream exists and start reading it after the last applied message."""
        if self._thread is not None:
            raise RuntimeError("cosigner already started")
        self._thread = threading.Thread(target=self._run, name=f"cosign-{self.org_id}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S + 5):
            raise StorageError("cosigner did not start in time", code="network_error")
        if self._start_error is not None:
            self._thread.join(5)
            err = self._start_error
            if isinstance(err, BlokError):
                raise err
            raise StorageError(f"cosigner could not start: {err!r}", code="network_error") from err
        return self

    def publish(self, height: int, note: str) -> None:
        """Hand our own signed note for ``height`` to the loop; returns at once (the committer calls it).

        Call it in height order. Malformed notes, notes of another chain or for another height
        are refused here, since they are bugs of the caller. Publishing the same note again
        (after a restart) is harmless.
        """
        text, _ = parse_note(note)
        if _note_height(text, self.chain) != height:
            raise InputError(f"note is not the checkpoint of height {height}", code="bad_checkpoint")
        with self._lock:
            if self._closed:
                log.warning("cosigner closed: checkpoint not shared", extra={"height": height})
                return
            if not self._accepting:
                self._early.append((height, note))
                return
            loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._on_publish, height, note)

    def final(self, height: int) -> str | None:
        """The quorum-signed note for ``height``, or None while it is not final."""
        with self._lock:
            return self._final_locked(height)

    def latest_final(self) -> tuple[int, str] | None:
        """The highest final height and its note (lower heights may still be open)."""
        with self._lock:
            return self._latest

    def wait_final(self, height: int, timeout_s: float) -> str | None:
        """Block until ``height`` is final or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                note = self._final_locked(height)
                remaining = deadline - time.monotonic()
                if note is not None or remaining <= 0:
                    return note
                self._cond.wait(remaining)

    def conflicts(self) -> list[dict[str, Any]]:
        """Evidence of divergence: verified notes whose text differs from ours, with the signer named."""
        with self._lock:
            rows = self._read("SELECT height, signer, note, ours, seen_ms FROM checkpoint_conflicts "
                              "ORDER BY height, signer")
        return [{"height": h, "signer": s, "note": n, "ours": o, "seen_ms": t} for h, s, n, o, t in rows]

    def signers(self, height: int) -> list[str]:
        """Trusted key names whose signature on our text for ``height`` we hold so far."""
        with self._lock:
            h = self._heights.get(height)
            if h is not None:
                return list(h.signers)
            rows = self._read("SELECT signers FROM own_checkpoints WHERE height=?", height)
        return list(json.loads(rows[0][0])) if rows else []

    def last_own_height(self) -> int | None:
        """The highest height whose own note this cosigner has recorded: after a crash, the node
        re-publishes its blocks above it (in height order) so none of its heights stays unsigned."""
        with self._lock:
            return self._max_own if self._max_own >= 0 else None

    def close(self) -> None:
        """Stop the loop and close the connection; notes not yet acknowledged are re-sent on next start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):      # loop already gone
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(15)
            if self._thread.is_alive():
                log.error("cosigner loop did not stop", extra={"org": self.org_id})
                return                                    # leave the DB to the daemon thread
        with self._lock:
            for conn in (self._db, self._reader, self._wal_db):
                conn.close()
            self._cond.notify_all()

    def __enter__(self) -> Cosigner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads

    def _read(self, sql: str, *args: Any) -> list[Any]:
        """A query on the read connection (caller holds ``_lock``); nothing once closed."""
        try:
            return self._reader.execute(sql, args).fetchall()
        except sqlite3.ProgrammingError:      # closed
            return []

    def _final_locked(self, height: int) -> str | None:
        note = self._finals.get(height)
        if note is not None:
            return note
        rows = self._read("SELECT note FROM final_checkpoints WHERE height=?", height)
        return str(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:      # surfaced by start() if it happens before ready
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.exception("cosigner loop failed", extra={"org": self.org_id})
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._send_slots = asyncio.Semaphore(MAX_SENDS_IN_FLIGHT)
        try:
            await self._connect()
            await self._ensure_stream()
            self._refresh_keys(force=True)
            await self._subscribe()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
            return
        for height, note in self._db.execute(
                "SELECT height, note FROM own_checkpoints WHERE published=0 ORDER BY height").fetchall():
            self._spawn_send(int(height), str(note))
        with self._lock:
            early, self._early = self._early, []
            self._accepting = not self._closed
        for height, note in early:
            self._on_publish(height, note)
        self._ready.set()
        self._spawn(self._checkpoint_wal())
        await self._stop.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()      # a WAL checkpoint may be running
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()      # also stops the ordered consumer's own tasks
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)
        # Closing while disconnected can leave the client's own tasks behind; end them before the loop.
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        self._commit()

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            quiet = self._nc is not None and self._nc.is_reconnecting      # one line per retry is noise
            log.log(logging.INFO if quiet else logging.WARNING, "nats error: %s", exc, extra={"org": self.org_id})

        async def on_disconnect() -> None:
            log.info("nats disconnected", extra={"org": self.org_id})

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"org": self.org_id})

        options: dict[str, Any] = {
            "name": f"blokauto-cosign-{self.org_id}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 5,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        options.update(self._connect_options)
        self._nc = await asyncio.wait_for(nats.connect(servers=self.servers, **options), START_TIMEOUT_S)
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)

    async def _ensure_stream(self) -> None:
        """Create the SIGS stream if no node has yet; several nodes may race, the loser finds it made."""
        assert self._js is not None
        config = StreamConfig(
            name=self.stream, subjects=[self.subject], storage=StorageType.FILE,
            num_replicas=self.replicas, retention=RetentionPolicy.LIMITS,
            max_age=0, max_msgs=-1, max_bytes=-1, duplicate_window=DUPLICATE_WINDOW_S,
            description=f"blokauto checkpoint signatures of {self.chain}"[:200],
        )
        info = await ensure_stream(self._js, config, START_TIMEOUT_S - 2)
        if self.subject not in (info.config.subjects or []):
            raise StorageError(f"stream {self.stream} does not carry {self.subject}", code="network_error")
        last = info.state.last_seq
        if last < self._seq:
            log.warning("SIGS stream is behind what this node applied (recreated?); re-reading it all",
                        extra={"org": self.org_id, "stream_last": last, "applied": self._seq})
            self._seq = 0
        elif info.state.first_seq > self._seq + 1 and self._seq < last:
            log.warning("SIGS stream lost messages this node never read",
                        extra={"org": self.org_id, "first_seq": info.state.first_seq, "applied": self._seq})

    async def _subscribe(self) -> None:
        assert self._js is not None
        if self._seq > 0:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._seq + 1)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        gen = self._sub_gen

        async def on_msg(msg: Msg) -> None:
            if gen == self._sub_gen:      # after a rewind, the old subscription's queue is ignored
                self._on_msg(msg)

        self._sub = await self._js.subscribe(self.subject, stream=self.stream, cb=on_msg, config=config,
                                             ordered_consumer=True, idle_heartbeat=IDLE_HEARTBEAT_S)

    async def _checkpoint_wal(self) -> None:
        """Fold the WAL into the database off the loop: SQLite's automatic checkpoint would run
        inside a commit on the loop and its fsyncs stall cosigning for tens of milliseconds."""
        assert self._stop is not None
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), WAL_CHECKPOINT_S)
            try:
                await loop.run_in_executor(None, self._wal_db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.exception("WAL checkpoint failed", extra={"org": self.org_id})

    async def _resubscribe(self) -> None:
        """After a failed commit: read again from the last committed position."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        delay = 0.1
        while self._stop is not None and not self._stop.is_set():
            try:
                await self._subscribe()
                return
            except Exception as exc:
                log.warning("cannot subscribe again, retrying: %r", exc, extra={"org": self.org_id})
                await asyncio.sleep(delay)      # back-off only
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ keys and transactions

    def _refresh_keys(self, force: bool = False) -> None:
        """Trusted keys come from ledger state, which changes with blocks: re-read them after each
        commit (publish) and at most every KEYS_TTL_S otherwise."""
        now = time.monotonic()
        if not force and now - self._known_at < KEYS_TTL_S:
            return
        self._known_at = now
        try:
            keys = list(self._keys_fn())
            quorum = int(self._quorum_fn())
            if keys != self._keys:
                self._known = known_keys(*keys)
                self._trusted = frozenset(name for name, _ in self._known)
                self._keys = keys
        except Exception:
            log.exception("cannot read checkpoint keys; keeping the previous ones", extra={"org": self.org_id})
            return
        self._quorum = max(1, quorum)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """A transaction of its own, for setup before the loop runs."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _write(self) -> sqlite3.Connection:
        """The writer connection inside the loop's open batch transaction (begun on first use).

        Everything the loop does until it next goes idle (a burst of stream messages, publishes,
        acks) commits as one transaction, scheduled with ``call_soon``: one commit per burst
        instead of one per message. Re-applying a message is harmless (merges, conflicts and
        pending notes are all deduplicated), so the stream position only has to be written in
        the same commit as the effects it covers, never ahead of them.
        """
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            self._tx_ops = 0
            asyncio.get_running_loop().call_soon(self._commit)
        self._tx_ops += 1
        if self._tx_ops > MAX_BATCH_OPS:      # a long catch-up burst: don't hide finals for too long
            self._commit()
            return self._write()
        return self._db

    def _commit(self) -> None:
        """Commit the batch, then make its finals visible and wake waiters."""
        if not self._in_tx:
            return
        try:
            if self._seq != self._saved_seq:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('stream_seq', ?)", (str(self._seq),))
            self._db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("cannot commit cosigning state; re-reading from the last committed position",
                          extra={"org": self.org_id})
            self._abort_batch()
            return
        self._in_tx = False
        self._saved_seq = self._seq
        finals, self._newly_final = self._newly_final, []
        if finals:
            with self._cond:
                for height, note in finals:
                    self._finals[height] = note
                    self._finals.move_to_end(height)
                    if self._latest is None or height >= self._latest[0]:
                        self._latest = (height, note)
                while len(self._finals) > CACHE_HEIGHTS:
                    self._finals.popitem(last=False)
                self._cond.notify_all()

    def _abort_batch(self) -> None:
        """Roll back a failed batch: forget what memory learnt in it and read the stream again from
        the last committed position (our own notes of the batch are lost; see ``publish``)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        self._in_tx = False
        self._newly_final = []
        with self._lock:
            self._heights.clear()
        self._seq = self._saved_seq
        self._max_own = self._db.execute("SELECT coalesce(max(height), -1) FROM own_checkpoints").fetchone()[0]
        self._sub_gen += 1
        if self._stop is not None and not self._stop.is_set():
            self._spawn(self._resubscribe())

    # ------------------------------------------------------------------ state per height

    def _get(self, height: int) -> _Height | None:
        h = self._heights.get(height)
        if h is not None:
            return h
        row = self._db.execute(
            "SELECT o.note, o.merged, o.signers, o.published, f.height IS NOT NULL "
            "FROM own_checkpoints o LEFT JOIN final_checkpoints f ON f.height = o.height WHERE o.height=?",
            (height,)).fetchone()
        if row is None:
            return None
        own, merged, signers, published, final = row
        text, sigs = parse_note(merged)
        h = _Height(own=own, text=text, lines={(s.name, s.key_hash): s.to_line() for s in sigs},
                    signers=tuple(json.loads(signers)), final=bool(final), published=bool(published))
        self._remember(height, h)
        return h

    def _remember(self, height: int, h: _Height) -> None:
        with self._lock:
            self._heights[height] = h
            self._heights.move_to_end(height)
            while len(self._heights) > CACHE_HEIGHTS:
                self._heights.popitem(last=False)

    def _save(self, height: int, h: _Height) -> None:
        """Write the merged note; if it now has a quorum of trusted signers it becomes (or stays) final."""
        merged = format_note(h.text, h.lines.values()) if h.lines else h.own
        signers = tuple(sorted({name for name, _ in h.lines} & self._trusted))
        with self._lock:
            h.signers = signers
        db = self._write()
        db.execute("UPDATE own_checkpoints SET merged=?, signers=? WHERE height=?",
                   (merged, json.dumps(signers), height))
        if h.final or len(signers) >= self._quorum:
            db.execute("INSERT OR REPLACE INTO final_checkpoints VALUES (?, ?, ?, ?)",
                       (height, merged, json.dumps(signers), _now_ms()))
            h.final = True
            self._newly_final.append((height, merged))

    # ------------------------------------------------------------------ events

    def _on_publish(self, height: int, note: str) -> None:
        """Our node committed ``height``: record our note, apply notes that arrived before it, share it."""
        self._refresh_keys(force=True)
        try:
            existing = self._get(height)
            if existing is not None:
                if existing.own != note:
                    log.error("our node signed two different checkpoints for one height; keeping the first",
                              extra={"org": self.org_id, "height": height})
                elif not existing.published:
                    self._spawn_send(height, note)
                return
            text, sigs = parse_note(note)
            lines: dict[tuple[str, bytes], str] = {}
            try:
                verify_note(note, self._known)
                lines = {(s.name, s.key_hash): s.to_line() for s in sigs if (s.name, s.key_hash) in self._known}
            except VerificationError as exc:
                log.warning("our own checkpoint carries no trusted signature (%s)", exc.code,
                            extra={"org": self.org_id, "height": height})
            h = _Height(own=note, text=text, lines=lines)
            db = self._write()
            db.execute("INSERT INTO own_checkpoints (height, note, merged, signers) VALUES (?, ?, ?, '[]')",
                       (height, note, note))
            with self._lock:
                self._max_own = max(self._max_own, height)
            self._remember(height, h)
            waiting = [str(r[0]) for r in db.execute("SELECT note FROM pending_notes WHERE height=?", (height,))]
            db.execute("DELETE FROM pending_notes WHERE height=? OR height<?", (height, height - PENDING_WINDOW))
            for other in waiting:
                other_text, other_sigs = parse_note(other)
                self._merge(height, h, other, other_text, other_sigs)
            self._save(height, h)
        except sqlite3.Error:
            log.exception("cannot record our checkpoint", extra={"org": self.org_id, "height": height})
            self._abort_batch()
            return
        self._spawn_send(height, note)

    def _on_msg(self, msg: Msg) -> None:
        """One note from the stream (in stream order; a replayed one changes nothing)."""
        seq = msg.metadata.sequence.stream
        if seq <= self._seq:
            return
        self._refresh_keys()
        try:
            self._receive(msg.data)
        except sqlite3.Error:
            log.exception("cannot apply a cosigned note", extra={"org": self.org_id, "seq": seq})
            self._abort_batch()
            return
        except Exception:      # a bug triggered by this message: skip it rather than stall on it
            log.exception("cannot apply a cosigned note; skipped", extra={"org": self.org_id, "seq": seq})
        self._seq = seq
        self._write()      # the new position is saved with the batch

    def _receive(self, data: bytes) -> None:
        try:
            note = data.decode("utf-8")
            text, sigs = parse_note(note)
            height = _note_height(text, self.chain)
        except (UnicodeDecodeError, BlokError) as exc:
            log.warning("dropped a malformed checkpoint note: %s", exc, extra={"org": self.org_id})
            return
        h = self._get(height)
        if h is not None:
            if note != h.own and self._merge(height, h, note, text, sigs):    # our own echo adds nothing
                self._save(height, h)
            return
        if height < self._max_own - PENDING_WINDOW:
            return      # far below what our node signs now (it had no cosigner then): ours will never come
        try:
            verify_note(note, self._known)
        except VerificationError as exc:
            if exc.code != "unverified_note":      # a signer we may only learn of later: keep it
                log.warning("dropped a checkpoint note with a bad signature",
                            extra={"org": self.org_id, "height": height})
                return
        except BlokError as exc:
            log.warning("dropped a checkpoint note: %s", exc, extra={"org": self.org_id, "height": height})
            return
        self._write().execute("INSERT OR IGNORE INTO pending_notes VALUES (?, ?)", (height, note))

    def _merge(self, height: int, h: _Height, note: str, text: str, sigs: list[NoteSignature]) -> bool:
        """Verify ``note``; merge its trusted lines if its text is ours, else keep it as evidence.
        Returns whether anything new was merged."""
        try:
            _, names = verify_note(note, self._known)
        except VerificationError as exc:
            if exc.code == "unverified_note":
                log.debug("ignored a note with no trusted signer", extra={"org": self.org_id, "height": height})
            else:
                log.warning("dropped a checkpoint note with a bad signature (%s)", exc.code,
                            extra={"org": self.org_id, "height": height})
            return False
        except BlokError as exc:
            log.warning("dropped a checkpoint note: %s", exc, extra={"org": self.org_id, "height": height})
            return False
        if text != h.text:
            for name in names:
                cur = self._write().execute("INSERT OR IGNORE INTO checkpoint_conflicts VALUES (?, ?, ?, ?, ?)",
                                            (height, name, note, h.own, _now_ms()))
                if cur.rowcount:
                    log.error("checkpoint conflict: %s signed a different checkpoint", name,
                              extra={"org": self.org_id, "height": height, "signer": name})
            if self.outvoted is None:
                self._check_outvoted(height, self._quorum, self._write())
            return False
        added = False
        for sig in sigs:
            ident = (sig.name, sig.key_hash)
            if ident in self._known and ident not in h.lines:   # first signature per key wins
                h.lines[ident] = sig.to_line()
                added = True
        return added

    def _check_outvoted(self, height: int, quorum: int, db: sqlite3.Connection) -> None:
        """A quorum of organisations signed one checkpoint for ``height`` and it is not ours: that
        checkpoint is the network's, so this node's state is the one that diverged. It must stop
        committing (the node halts on :attr:`outvoted`) rather than keep building on a wrong root."""
        by_text: dict[str, set[str]] = {}
        for signer, note in db.execute("SELECT signer, note FROM checkpoint_conflicts WHERE height=?", (height,)):
            by_text.setdefault(parse_note(str(note))[0], set()).add(str(signer))
        for signers in by_text.values():
            if len(signers) >= quorum:
                self.outvoted = {"height": height, "signers": sorted(signers), "quorum": quorum}
                log.critical("a quorum signed another checkpoint than ours: this node diverged and stops",
                             extra={"org": self.org_id, "height": height, "signers": sorted(signers)})
                return

    # ------------------------------------------------------------------ sending

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_send(self, height: int, note: str) -> None:
        self._spawn(self._send(height, note))

    async def _send(self, height: int, note: str) -> None:
        """Publish our note until the stream acknowledges it; the message id makes retries (and a
        re-send after restart within the duplicate window) one stored message."""
        assert self._js is not None and self._send_slots is not None
        msg_id = f"sig:{self.org_id}:{height}:{hashlib.sha256(note.encode()).hexdigest()[:16]}"
        delay = 0.05
        async with self._send_slots:      # a catch-up burst must not time out its own acks
            while True:
                try:
                    await self._js.publish(self.subject, note.encode("utf-8"), stream=self.stream,
                                           headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT_S)
                    break
                except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                    log.warning("publishing our checkpoint failed, retrying: %r", exc,
                                extra={"org": self.org_id, "height": height})
                    await asyncio.sleep(delay)      # back-off only; correctness never depends on it
                    delay = min(delay * 2, 2.0)
        try:
            self._write().execute("UPDATE own_checkpoints SET published=1 WHERE height=?", (height,))
        except sqlite3.Error:
            log.exception("cannot mark our checkpoint published", extra={"org": self.org_id, "height": height})
            self._abort_batch()
            return
        h = self._heights.get(height)
        if h is not None:
            h.published = True
