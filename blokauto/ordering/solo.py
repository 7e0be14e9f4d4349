"""The embedded orderer: arrival order in one process, batched for the committer."""

from __future__ import annotations

import queue
import time

from blokauto.ledger.tx import SignedTx


class SoloOrderer:
    """A FIFO: the committer takes everything that is waiting, up to ``max_txs`` a block."""

    def __init__(self, linger_s: float = 0.002) -> None:
        self._queue: queue.SimpleQueue[SignedTx | None] = queue.SimpleQueue()
        self._linger_s = linger_s
        self._closed = False

    def submit(self, tx: SignedTx) -> None:
        self._queue.put(tx)

    def depth(self) -> int:
        return self._queue.qsize()

    def next_batch(self, max_txs: int, wait_s: float) -> list[SignedTx]:
        """Block up to ``wait_s`` for a first transaction, then gather what else has arrived."""
        try:
            first = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return []
        if first is None:
            return []
        batch = [first]
        get = self._queue.get_nowait
        deadline = time.monotonic() + self._linger_s
        while len(batch) < max_txs:
            try:
                item = get()
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.0005)
                continue
            if item is None:
                break
            batch.append(item)
        return batch

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
