"""How submitted transactions become one total order.

An orderer takes checked transactions from any number of threads and hands the committer
batches in one order. ``solo`` does it in process; a JetStream orderer does it across nodes.
Orderers never execute anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from blokauto.ledger.tx import SignedTx


@dataclass(frozen=True, slots=True)
class Batch:
    """The transactions of the next block, in order, with the block's time.

    ``position`` is the ordering service's sequence of the batch's last message; the node commits
    it with the block and resumes after it on restart (None for the in-process orderer).
    ``dropped`` are messages every node refuses the same way (bad signature...), as (hash or
    sequence, code) for logs and metrics."""

    txs: list[SignedTx]
    time_ms: int | None = None          # None: the node's clock (single node only)
    position: int | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)


class Orderer(Protocol):
    def submit(self, tx: SignedTx) -> None: ...

    def next_batch(self, max_txs: int, wait_s: float) -> list[SignedTx] | Batch: ...

    def depth(self) -> int: ...

    def close(self) -> None: ...
