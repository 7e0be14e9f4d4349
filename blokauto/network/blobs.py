"""Off-chain data held by every member: crash records and telematics samples shared over JetStream.

A node that stores an item in its off-chain store (it checked the item against the commitment its
ledger holds) publishes it on the chain's BLOBS stream; every node reads the stream and stores each
item again only after checking it against its *own* ledger: the crash deposit's hash, signature and
summary, or the batch's Merkle root and aggregates. An item whose commitment this node has not
committed yet (the block is still on its way) waits and is retried. Nobody has to trust the
publisher: a forged or altered item fails the check on every node and is dropped.

The stream keeps everything (a new node reads it all); ``Nats-Msg-Id`` = ``<kind>:<name>`` stores
each item once. Items are at most 2 MiB (a day of 1 Hz telematics is 2.2 MB: send hours, or raise
``max_payload``), so the generated server configs allow 4 MiB messages. The position read so far
is kept in ``blobs.pos`` beside the ledger; re-reading is harmless (stores are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from blokauto.errors import StorageError
from blokauto.network.cosign import stream_id
from blokauto.ordering.streams import ensure_stream

log = logging.getLogger("blokauto.network.blobs")

START_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 10.0
RETRY_S = 0.5                  # how often items waiting for their commitment are looked at again
GIVE_UP_S = 3_600.0            # an item whose commitment never arrives is dropped after an hour
MAX_ITEM_BYTES = 2 * 1024 * 1024

# (kind, name, data) -> "" when stored or already there, "wait" when the commitment is not here yet,
# else the reason it was refused
Accept = Callable[[str, str, bytes], str]


def blobs_stream_name(chain: str) -> str:
    return f"BLOKAUTO_{stream_id(chain)}_BLOBS"


def blobs_subject(chain: str) -> str:
    return f"blokauto.{stream_id(chain)}.blob"


class BlobReplicator:
    """Publishes this node's checked off-chain items and stores the others' once checked here."""

    def __init__(self, servers: list[str], chain: str, org_id: str, data_dir: Path, accept: Accept, *,
                 replicas: int = 3, connect_options: dict[str, Any] | None = None) -> None:
        self.servers, self.chain, self.org_id = servers, chain, org_id
        self.stream, self.subject = blobs_stream_name(chain), blobs_subject(chain)
        self.accept = accept
        self.replicas = replicas
        self._options = dict(connect_options or {})
        self._pos_file = Path(data_dir) / "blobs.pos"
        self._seq = int(self._pos_file.read_text() or 0) if self._pos_file.exists() else 0
        self._waiting: dict[tuple[str, str], tuple[bytes, float, int]] = {}   # -> (data, since, stream seq)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = False
        self._nc: Any = None
        self._js: Any = None
        self.received = 0
        self.refused = 0

    # -- public ----------------------------------------------------------------------------------

    def start(self) -> BlobReplicator:
        self._thread = threading.Thread(target=self._run, name=f"blobs-{self.org_id}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S + 5):
            raise StorageError("blob replication did not start in time", code="network_error")
        if self._start_error is not None:
            raise StorageError(f"blob replication could not start: {self._start_error!r}", code="network_error")
        return self

    def publish(self, kind: str, name: str, data: bytes) -> None:
        """Share an item this node stored (and checked); returns at once."""
        if len(data) > MAX_ITEM_BYTES:
            log.warning("off-chain item too large to share", extra={"kind": kind, "bytes": len(data)})
            return
        asyncio.run_coroutine_threadsafe(self._publish(kind, name, data), self._loop)

    def close(self) -> None:
        self._closing = True
        if self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def status(self) -> dict[str, int]:
        return {"position": self._seq, "received": self.received, "refused": self.refused,
                "waiting": len(self._waiting)}

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
        except BaseException as exc:   # reported to start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.create_task(self._retry_waiting())
        self._loop.run_forever()

    async def _open(self) -> None:
        options = {"max_reconnect_attempts": -1, **self._options}
        self._nc = await asyncio.wait_for(nats.connect(servers=self.servers, **options), START_TIMEOUT_S)
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        config = StreamConfig(name=self.stream, subjects=[self.subject], storage=StorageType.FILE,
                              num_replicas=self.replicas, retention=RetentionPolicy.LIMITS, max_age=0,
                              max_msgs=-1, max_bytes=-1, max_msg_size=MAX_ITEM_BYTES + 4096,
                              duplicate_window=120.0, description=f"blokauto off-chain items of {self.chain}"[:200])
        await ensure_stream(self._js, config, START_TIMEOUT_S - 2)
        start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._seq + 1) \
            if self._seq else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        await self._js.subscribe(self.subject, cb=self._on_message, ordered_consumer=True, config=start,
                                 idle_heartbeat=1.0)

    async def _publish(self, kind: str, name: str, data: bytes) -> None:
        headers = {"Nats-Msg-Id": f"{kind}:{name}", "Blokauto-Kind": kind, "Blokauto-Name": name,
                   "Blokauto-Org": self.org_id}
        for attempt in range(5):
            try:
                await self._js.publish(self.subject, data, headers=headers)
                return
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.5 * (attempt + 1))
        log.warning("could not share an off-chain item", extra={"kind": kind, "item": name[:16]})

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        kind, name = headers.get("Blokauto-Kind", ""), headers.get("Blokauto-Name", "")
        seq = msg.metadata.sequence.stream
        self._handle(kind, name, msg.data, seq)
        self._seq = seq
        self._save_position()

    def _check(self, kind: str, name: str, data: bytes) -> str:
        try:
            return self.accept(kind, name, data)
        except Exception as exc:  # a malformed item must not stop the stream
            return type(exc).__name__

    def _handle(self, kind: str, name: str, data: bytes, seq: int) -> None:
        verdict = self._check(kind, name, data)
        if verdict == "wait":
            self._waiting.setdefault((kind, name), (data, time.monotonic(), seq))
        elif verdict:
            self.refused += 1
            log.warning("dropped an off-chain item that does not match this ledger",
                        extra={"kind": kind, "item": name[:16], "reason": verdict})
        else:
            self.received += 1

    async def _retry_waiting(self) -> None:
        while not self._closing:
            await asyncio.sleep(RETRY_S)
            for key, (data, since, seq) in list(self._waiting.items()):
                self._waiting.pop(key, None)
                if time.monotonic() - since > GIVE_UP_S:
                    self.refused += 1
                    continue
                verdict = self._check(key[0], key[1], data)
                if verdict == "wait":
                    self._waiting[key] = (data, since, seq)
                elif verdict:
                    self.refused += 1
                else:
                    self.received += 1

    def _save_position(self) -> None:
        """Up to the last message read, but never past an item still waiting: a restart re-reads it."""
        position = min([self._seq, *(seq - 1 for _, _, seq in self._waiting.values())])
        tmp = self._pos_file.with_suffix(".tmp")
        tmp.write_text(str(position))
        tmp.replace(self._pos_file)

    async def _shutdown(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
