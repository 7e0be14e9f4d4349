"""The consortium orderer (ADR 0006): one JetStream stream per chain gives every node one order.

Why this shape: JetStream's Raft replicates the log, so no node can rewrite or stop it; blocks are
cut from the log's content alone (transaction runs between cut markers, split every
``max_block_txs`` messages), so every node that reads the same messages cuts the same blocks with
the same times, without talking to the others. A block's time is the time the stream stored the
marker that opened its run at (stamped by the stream leader, replicated by Raft): no member, not
even the one that published the marker, chooses it, and a marker carries nothing else that
matters, so a stray or forged marker can at worst end a block early.

Position semantics (what a node commits as ``meta.stream_seq``): ``Batch.position`` is the stream
sequence of the block's last *transaction* message (accepted or dropped); the marker that closes a
block is **not** included. A node restarted with ``start_after=position`` and
``start_time_ms=<that block's time>`` therefore reads first either the closing marker, which opens
the next run with the marker's stored time exactly as before, or (after a split at ``max_block_txs``)
the rest of the same run, whose time is that block's time. Had the position included the closing
marker, the restarted node would have to know that marker's time, which the block does not carry.

Dedupe: ``Nats-Msg-Id`` is SHA-256 of the wire bytes (body *and* signatures), so a copy of a body
with a bad signature published first cannot shadow the honest submission; an identical resubmission
within the window is stored once, and replays outside it fall to the nonce rule. ``submit`` still
compares the stored bytes on a "duplicate" answer (``duplicate_conflict``, 409) as a safety net.

A closed chunk whose messages were all dropped comes out as a ``Batch`` with ``txs == []`` (and
its ``dropped``): it makes no block; a restarted node re-reads and drops those messages again.

Threads: the NATS client lives on its own asyncio loop in a daemon thread; a cutter thread checks
each message statelessly (signatures cost ~70-120 us, kept off both the loop and the committer; a
transaction this node checked before publishing it is not checked twice), cuts
blocks and publishes markers; ``submit`` (any thread) and ``next_batch`` (the committer) only
cross into those threads through thread-safe queues and ``run_coroutine_threadsafe``.

Consumption: a self-managed ordered push consumer (ephemeral, in memory, ack none, flow control,
idle heartbeats) starting at ``start_after + 1``. Every delivered message's stream sequence must be
exactly the next one expected; on a gap, a missed heartbeat, a consumer error or a reconnect the
consumer is recreated from the next expected sequence, so nothing is lost or reordered across a
server restart. Flow-control replies are held back while the cutter is behind (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from blokauto.contracts.registry import convert_payload, load_all
from blokauto.crypto import canonical
from blokauto.errors import BlokError, InputError, NetworkError
from blokauto.ledger.tx import SignedTx, parse_tx, verify_tx_signatures
from blokauto.ordering.base import Batch
from blokauto.ordering.streams import ensure_stream

log = logging.getLogger("blokauto.ordering.jetstream")

T = TypeVar("T")

DUPLICATE_WINDOW_S = 120.0
HEARTBEAT_S = 1.0               # consumer idle heartbeat; 3 missed → the consumer is recreated
MISSED_HEARTBEATS = 3
REQUEST_TIMEOUT_S = 2.0         # one JetStream API call or publish attempt
SUBMIT_DEADLINE_S = 8.0         # retries of one submit span a stream leader election (~2-5 s)
START_TIMEOUT_S = 15.0
MARKER_RETRY_S = 0.25           # republish a marker for the same position at most this often
MAX_MARKER_BYTES = 256
RAW_HIGH_WATER = 20_000         # hold flow-control replies while this many messages await the cutter
READY_BATCHES = 64              # closed blocks buffered for the committer before the cutter waits
IDLE_TICK_S = 0.25
MAX_REMEMBERED_CHECKS = 20_000  # own submissions whose checks the cutter need not repeat


def stream_id(chain: str) -> str:
    """The chain's short id in stream and subject names: first 16 hex of SHA-256(chain id)."""
    return hashlib.sha256(chain.encode()).hexdigest()[:16]


def check_message(raw: bytes, chain: str) -> SignedTx:
    """The same calls as ``blokauto.node.check_stateless`` (imported from there it would make a
    cycle once the node imports this module): size, canonical form, schema, chain, type,
    payload incl. ``validate()``, signatures."""
    tx = parse_tx(raw, chain)
    tx_type = load_all().get(tx.type)
    if tx_type is None:
        raise InputError(f"unknown transaction type {tx.type}", code="unknown_type")
    convert_payload(tx_type, tx.payload)
    verify_tx_signatures(tx)
    return tx


def parse_marker(data: bytes) -> bool:
    """Is this a well-formed cut marker, ``{"by": org}``? A malformed one is ignored by every node.

    A marker carries no time: the block it opens takes the time the stream stored the marker at
    (:func:`stored_time_ms`), which no member can choose."""
    if len(data) > MAX_MARKER_BYTES:
        return False
    try:
        doc = canonical.decode(data)
    except Exception:  # anything unparsable is simply not a marker
        return False
    return type(doc) is dict and set(doc) == {"by"} and type(doc["by"]) is str and bool(doc["by"])


def marker_body(org_id: str) -> bytes:
    return canonical.encode({"by": org_id})


def stored_time_ms(reply: str) -> int:
    """The time (ms) the stream stored a delivered message at, from its JetStream ack subject.

    The stream leader stamps each message once and Raft replicates the stamp with it, so every
    consumer on every server reads the same value: a block time all nodes agree on and that no
    member (only the ordering service's clock) sets. Integer nanoseconds, never a float."""
    tokens = reply.split(".")
    if len(tokens) == 9:                    # $JS.ACK.<stream>.<consumer>.<dlv>.<sseq>.<cseq>.<ns>.<pending>
        return int(tokens[7]) // 1_000_000
    return int(tokens[Msg.Ack.Timestamp]) // 1_000_000   # with domain and account hash


@dataclass
class BlockCutter:
    """Pure block cutting: stream messages in, closed blocks out (no I/O, no clock).

    Same messages from the same start give the same blocks on every node; the cutter thread
    and the tests drive it directly."""

    chain: str
    tx_subject: str
    cut_subject: str
    max_block_txs: int
    run_time_ms: int                     # stored time of the marker that opened the current run
    txs: list[SignedTx] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    # Transactions this node itself checked (same stateless checks) before publishing them, by
    # SHA-256 of their wire bytes: the same bytes pass the same checks, so they are not repeated.
    checked: dict[bytes, SignedTx] = field(default_factory=dict)
    open_msgs: int = 0                   # transaction messages in the open chunk
    last_tx_seq: int = 0

    def feed(self, seq: int, subject: str, data: bytes, stored_ms: int = 0) -> tuple[Batch, int] | None:
        """Take the next message (with the time the stream stored it at); returns a closed block and
        its message count when one closes."""
        if subject == self.tx_subject:
            known = self.checked.pop(hashlib.sha256(data).digest(), None) if self.checked else None
            try:
                self.txs.append(known if known is not None and known.raw == data else check_message(data, self.chain))
            except BlokError as exc:
                self.dropped.append((str(seq), exc.code))
            except Exception:  # deterministic too: same bytes fail the same way
                log.exception("unexpected failure checking stream message %d", seq)
                self.dropped.append((str(seq), "malformed"))
            self.open_msgs += 1
            self.last_tx_seq = seq
            if self.open_msgs >= self.max_block_txs:
                return self._close()
            return None
        if subject == self.cut_subject:
            if not parse_marker(data):
                log.warning("ignoring malformed cut marker at stream sequence %d", seq)
                return None
            closed = self._close() if self.open_msgs else None
            self.run_time_ms = stored_ms
            return closed
        return None

    def _close(self) -> tuple[Batch, int]:
        batch = Batch(txs=self.txs, time_ms=self.run_time_ms, position=self.last_tx_seq, dropped=self.dropped)
        count = self.open_msgs
        self.txs, self.dropped, self.open_msgs = [], [], 0
        return batch, count


_STOP = object()


class JetStreamOrderer:
    """Orders transactions through the chain's JetStream stream and hands out deterministic blocks."""

    def __init__(self, servers: list[str], chain: str, org_id: str, *, start_after: int = 0,
                 start_time_ms: int = 0, max_block_txs: int = 2000, cut_interval_s: float = 0.05,
                 replicas: int | None = None, connect_options: dict[str, Any] | None = None) -> None:
        if not servers:
            raise ValueError("at least one NATS server is needed")
        if max_block_txs < 1:
            raise ValueError("max_block_txs must be at least 1")
        self.servers = list(servers)
        self.chain = chain
        self.org_id = org_id
        self.start_after = start_after
        self.max_block_txs = max_block_txs
        self.cut_interval_s = cut_interval_s
        self.replicas = replicas or min(3, len(self.servers))
        self._connect_options = dict(connect_options or {})
        sid = stream_id(chain)
        self.stream_name = f"BLOKAUTO_{sid}"
        self.tx_subject = f"blokauto.{sid}.tx"
        self.cut_subject = f"blokauto.{sid}.cut"
        self._cutter = BlockCutter(chain, self.tx_subject, self.cut_subject, max_block_txs, start_time_ms)

        # loop thread state (touched only on the loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._consumer: str | None = None
        self._generation = 0
        self._expected = start_after + 1            # next stream sequence to accept
        self._last_activity = time.monotonic()
        self._reset_wanted: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[Any] = set()         # strong refs to fire-and-forget tasks/futures

        # cross-thread state
        self._raw: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready: queue.Queue[tuple[Batch, int]] = queue.Queue(maxsize=READY_BATCHES)
        self._cut_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._failure: NetworkError | None = None
        # depth = received - consumed - handed; each counter has a single writer thread
        self._received = 0                          # loop thread
        self._consumed = 0                          # cutter thread: markers and ignored messages
        self._handed = 0                            # committer thread

        # cutter thread state
        self._caught_up = False
        self._open_since: float | None = None
        self._marker_for = 0
        self._marker_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> JetStreamOrderer:
        """Connect, make sure the stream exists, start consuming after ``start_after``."""
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name=f"jetstream-{self.org_id}",
                                             daemon=True)
        self._loop_thread.start()
        try:
            self._call(self._open(), START_TIMEOUT_S)
            if self._failure is not None:
                raise self._failure
        except BaseException as exc:
            self.close()
            if isinstance(exc, NetworkError):
                raise
            raise NetworkError(f"cannot reach the ordering service: {exc!r}", code="ordering_unavailable",
                               http_status=503) from exc
        self._cut_thread = threading.Thread(target=self._cut_loop, name=f"cutter-{self.org_id}", daemon=True)
        self._cut_thread.start()
        return self

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                self._call(self._shutdown(), 5.0)
            except BaseException:  # closing anyway
                log.warning("orderer shutdown was not clean", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
        if loop is not None and not loop.is_running():
            loop.close()
        self._raw.put(_STOP)
        if self._cut_thread is not None:
            self._cut_thread.join(timeout=5)

    def __enter__(self) -> JetStreamOrderer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Orderer protocol -------------------------------------------------------------------

    def submit(self, tx: SignedTx) -> int:
        """Publish the wire bytes, deduplicated by hash; returns the stream sequence once stored
        by the stream's quorum (a resubmission returns the first copy's sequence)."""
        if self._loop is None or self._closing.is_set():
            raise NetworkError("the orderer is not running", code="ordering_unavailable", http_status=503)
        checked = self._cutter.checked
        if len(checked) >= MAX_REMEMBERED_CHECKS:   # published but never consumed (e.g. dropped as duplicates)
            checked.clear()
        checked[hashlib.sha256(tx.raw).digest()] = tx   # callers pass only transactions that passed check_stateless
        try:
            return self._call(self._publish_tx(tx), SUBMIT_DEADLINE_S + REQUEST_TIMEOUT_S + 1)
        except NetworkError:
            raise
        except BaseException as exc:
            raise NetworkError(f"ordering service unavailable: {exc!r}", code="ordering_unavailable",
                               http_status=503) from exc

    def next_batch(self, max_txs: int, wait_s: float) -> Batch | None:
        """The next closed block (``max_txs`` is ignored: ``max_block_txs`` is the network's rule)."""
        if self._failure is not None:
            raise self._failure
        try:
            batch, count = self._ready.get(timeout=wait_s)
        except queue.Empty:
            return None
        self._handed += count
        return batch

    def depth(self) -> int:
        """Messages received from the stream but not yet handed out."""
        return max(0, self._received - self._consumed - self._handed)

    # -- loop side: connection, stream, consumer -------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def _open(self) -> None:
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": f"blokauto-orderer-{self.org_id}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            "ping_interval": 5,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        options.update(self._connect_options)
        self._nc = await nats.connect(**options)
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        await self._ensure_stream()
        self._reset_wanted = asyncio.Event()
        await self._new_consumer()
        self._tasks = [asyncio.create_task(self._supervise()), asyncio.create_task(self._watchdog())]

    async def _ensure_stream(self) -> None:
        """Create the stream if missing (the ADR's settings), else use it as it is."""
        assert self._js is not None
        config = api.StreamConfig(
            name=self.stream_name, description=f"Blok Auto ordering of chain {self.chain}",
            subjects=[self.tx_subject, self.cut_subject], retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE, num_replicas=self.replicas, max_age=0, max_msgs=-1, max_bytes=-1,
            discard=api.DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW_S,
        )
        info = await ensure_stream(self._js, config, START_TIMEOUT_S - 2)
        subjects = set(info.config.subjects or [])
        if not {self.tx_subject, self.cut_subject} <= subjects:
            raise NetworkError(f"stream {self.stream_name} does not carry {self.tx_subject} and {self.cut_subject}",
                               code="ordering_misconfigured", http_status=503)
        if info.config.max_age or (info.config.max_msgs or -1) > 0 or (info.config.max_bytes or -1) > 0:
            log.warning("stream %s has limits that can drop history new nodes replay", self.stream_name)

    async def _new_consumer(self) -> None:
        """(Re)create the ordered push consumer from the next expected sequence."""
        assert self._nc is not None and self._js is not None
        self._generation += 1
        generation = self._generation
        old_sub, old_consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if old_sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone with it
                await old_sub.unsubscribe()
        if old_consumer is not None:
            with contextlib.suppress(Exception):  # ephemeral: it expires on its own
                await self._js.delete_consumer(self.stream_name, old_consumer)

        state = (await self._js.stream_info(self.stream_name)).state
        if state.last_seq < self._expected - 1 or self._expected < state.first_seq <= state.last_seq:
            # a deleted or recreated stream: waiting would stall silently, skipping would fork
            self._failure = NetworkError(
                f"stream {self.stream_name} holds {state.first_seq}..{state.last_seq} but this node resumes at "
                f"{self._expected}: its history was lost or the stream recreated", code="ordering_history_lost",
                http_status=503)
            log.error("%s", self._failure.message)
            return

        async def deliver(msg: Msg) -> None:
            self._on_msg(generation, msg)

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=deliver)
        config = api.ConsumerConfig(
            description=f"blokauto orderer {self.org_id}", deliver_subject=inbox,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._expected,
            ack_policy=api.AckPolicy.NONE, max_deliver=1, flow_control=True, idle_heartbeat=HEARTBEAT_S,
            mem_storage=True, num_replicas=1, inactive_threshold=10.0,
        )
        try:
            created = await self._js.add_consumer(self.stream_name, config, timeout=REQUEST_TIMEOUT_S)
        except BaseException:
            await sub.unsubscribe()
            raise
        if generation != self._generation:   # superseded meanwhile: the next reset makes another
            await sub.unsubscribe()
            with contextlib.suppress(Exception):  # ephemeral: it expires on its own
                await self._js.delete_consumer(self.stream_name, created.name)
            return
        self._sub, self._consumer = sub, created.name
        self._last_activity = time.monotonic()
        log.debug("consuming %s from %d with %s", self.stream_name, self._expected, created.name)

    def _want_reset(self, why: str) -> None:
        if self._reset_wanted is not None and not self._reset_wanted.is_set():
            log.info("recreating the stream consumer at %d: %s", self._expected, why)
            self._generation += 1            # ignore whatever the old consumer still delivers
            self._reset_wanted.set()

    async def _supervise(self) -> None:
        assert self._reset_wanted is not None
        while True:
            await self._reset_wanted.wait()
            self._reset_wanted.clear()
            backoff = 0.1
            while not self._closing.is_set():
                try:
                    await self._new_consumer()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # retried until the stream is back
                    log.warning("cannot recreate the stream consumer yet: %r", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            idle = time.monotonic() - self._last_activity
            if self._nc is not None and self._nc.is_connected and idle > MISSED_HEARTBEATS * HEARTBEAT_S:
                self._last_activity = time.monotonic()
                self._want_reset(f"no heartbeat for {idle:.1f}s")

    def _on_msg(self, generation: int, msg: Msg) -> None:
        """Accept exactly the next stream sequence; anything else resets the consumer."""
        if generation != self._generation:
            return
        self._last_activity = time.monotonic()
        headers = msg.headers
        if headers and "Status" in headers:
            self._on_status(msg, headers)
            return
        try:
            meta = msg.metadata
        except nats.errors.NotJSMessageError:
            return
        seq = meta.sequence.stream
        if seq < self._expected:
            return
        if seq > self._expected:
            self._want_reset(f"gap: got {seq}, expected {self._expected}")
            return
        self._expected = seq + 1
        self._received += 1
        self._raw.put((seq, msg.subject, msg.data, meta.num_pending, stored_time_ms(msg.reply)))

    def _on_status(self, msg: Msg, headers: dict[str, str]) -> None:
        if headers["Status"] != "100":
            self._want_reset(f"consumer status {headers['Status']} {headers.get('Description', '')}")
            return
        if msg.reply:                                    # flow control request
            self._answer_flow_control(msg.reply)
            return
        stalled = headers.get("Nats-Consumer-Stalled")
        if stalled:
            self._answer_flow_control(stalled)
        last = headers.get("Nats-Last-Stream")
        if last and last.isdigit() and int(last) >= self._expected:
            self._want_reset(f"heartbeat says {last} was delivered, expected {self._expected}")

    def _answer_flow_control(self, reply: str) -> None:
        self._keep(asyncio.get_running_loop().create_task(self._flow_control_reply(reply)))

    async def _flow_control_reply(self, reply: str) -> None:
        """Backpressure: the server sends more only after this reply; hold it while the cutter lags."""
        while self._raw.qsize() >= RAW_HIGH_WATER and not self._closing.is_set():
            await asyncio.sleep(0.01)
        if self._nc is not None and self._nc.is_connected:
            await self._nc.publish(reply)

    def _keep(self, task: Any) -> None:
        """Hold a fire-and-forget task or future until done (the loop keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_tx(self, tx: SignedTx) -> int:
        assert self._js is not None
        deadline = time.monotonic() + SUBMIT_DEADLINE_S
        backoff = 0.05
        while True:
            try:
                attempt_s = max(0.05, min(REQUEST_TIMEOUT_S, deadline - time.monotonic()))
                ack = await self._js.publish(self.tx_subject, tx.raw, timeout=attempt_s,
                                             headers={"Nats-Msg-Id": hashlib.sha256(tx.raw).hexdigest(),
                                                      "Nats-Expected-Stream": self.stream_name})
                if ack.duplicate:
                    await self._check_duplicate(ack.seq, tx)
                return ack.seq
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
                    nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionReconnectingError,
                    nats.errors.OutboundBufferLimitError) as exc:
                # a retry carries the same Nats-Msg-Id, so a first attempt that was stored is not doubled
                if time.monotonic() + backoff > deadline:
                    raise NetworkError(f"ordering service unavailable: {exc!r}", code="ordering_unavailable",
                                       http_status=503) from exc
                await asyncio.sleep(backoff)
                backoff = min(0.5, backoff * 2)
            except nats.errors.Error as exc:
                raise NetworkError(f"ordering service refused the transaction: {exc!r}",
                                   code="ordering_unavailable", http_status=503) from exc

    async def _check_duplicate(self, seq: int, tx: SignedTx) -> None:
        """The Msg-Id is the body hash, which does not cover signatures: a copy of this body with a bad
        signature, published first, would make this submission a silent no-op for the dedupe window."""
        assert self._js is not None
        try:
            stored = await self._js.get_msg(self.stream_name, seq)
        except nats.errors.Error:
            return          # cannot tell; the usual case is an honest resubmission
        if stored.data != tx.raw:
            raise NetworkError(f"stream sequence {seq} holds different bytes under this transaction's hash "
                               f"(a copy with other signatures); resubmit after {DUPLICATE_WINDOW_S:.0f} s",
                               code="duplicate_conflict", http_status=409)

    async def _publish_marker(self, last_seq: int) -> None:
        assert self._js is not None
        try:
            await self._js.publish(self.cut_subject, marker_body(self.org_id), timeout=REQUEST_TIMEOUT_S,
                                   headers={"Nats-Msg-Id": f"cut:{last_seq}",
                                            "Nats-Expected-Stream": self.stream_name})
        except Exception as exc:  # retried on the cutter's next tick
            log.warning("cut marker after %d not published: %r", last_seq, exc)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._generation += 1
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._consumer is not None and self._js is not None and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):  # ephemeral: it expires on its own
                await self._js.delete_consumer(self.stream_name, self._consumer)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        # the client's own tasks (subscriptions, pings) must end before the loop is closed
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _on_error(self, exc: Exception) -> None:
        # refused connections repeat every reconnect attempt; disconnects are logged once
        level = logging.DEBUG if isinstance(exc, OSError | asyncio.TimeoutError) else logging.WARNING
        log.log(level, "nats: %r", exc)

    async def _on_disconnected(self) -> None:
        if not self._closing.is_set():
            log.warning("disconnected from the ordering service")

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        log.info("reconnected to the ordering service at %s", url.netloc if url is not None else "?")
        self._want_reset("reconnected")

    # -- cutter thread ---------------------------------------------------------------------------

    def _cut_loop(self) -> None:
        """Check and cut messages in stream order; publish a marker when a run has waited long enough."""
        cutter = self._cutter
        while True:
            try:
                item = self._raw.get(timeout=self._cut_wait())
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                seq, subject, data, pending, stored_ms = item
                self._caught_up = pending == 0
                was_open = cutter.open_msgs
                closed = cutter.feed(seq, subject, data, stored_ms)
                if subject != self.tx_subject:
                    self._consumed += 1               # markers and strays are in no block
                if closed is not None:
                    self._open_since = None
                    if not self._hand_over(closed):
                        return
                if cutter.open_msgs and not was_open:
                    self._open_since = time.monotonic()
            self._maybe_cut()

    def _cut_wait(self) -> float:
        """Sleep until the open run is due a marker (or a message arrives), never spinning."""
        if not self._cutter.open_msgs or self._open_since is None or not self._caught_up:
            return IDLE_TICK_S
        due = self._open_since + self.cut_interval_s
        if self._cutter.last_tx_seq == self._marker_for:
            due = max(due, self._marker_at + MARKER_RETRY_S)
        return min(IDLE_TICK_S, max(0.001, due - time.monotonic()))

    def _hand_over(self, closed: tuple[Batch, int]) -> bool:
        while not self._closing.is_set():
            try:
                self._ready.put(closed, timeout=IDLE_TICK_S)
                return True
            except queue.Full:
                continue
        return False

    def _maybe_cut(self) -> None:
        """Publish a marker ``{"by"}`` once transactions have waited ``cut_interval_s`` unmarked.

        Only when caught up with the stream, so a node replaying history does not cut the live tail
        with markers for positions long past."""
        cutter = self._cutter
        if not cutter.open_msgs or self._open_since is None or not self._caught_up or not self._raw.empty():
            return
        now = time.monotonic()
        if now - self._open_since < self.cut_interval_s:
            return
        if cutter.last_tx_seq == self._marker_for and now - self._marker_at < MARKER_RETRY_S:
            return
        self._marker_for, self._marker_at = cutter.last_tx_seq, now
        loop = self._loop
        if loop is not None and not self._closing.is_set():
            self._keep(asyncio.run_coroutine_threadsafe(
                self._publish_marker(cutter.last_tx_seq), loop))
