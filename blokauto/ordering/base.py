"""How submitted transactions become one total order.

An orderer takes checked transactions from any number of threads and hands the committer
batches in one order. ``solo`` does it in process; a JetStream orderer does it across nodes.
Orderers never execute anything.
"""

from __future__ import annotations

from typing import Protocol

from blokauto.ledger.tx import SignedTx


class Orderer(Protocol):
    def submit(self, tx: SignedTx) -> None: ...

    def next_batch(self, max_txs: int, wait_s: float) -> list[SignedTx]: ...

    def depth(self) -> int: ...

    def close(self) -> None: ...
