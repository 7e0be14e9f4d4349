"""Bulk submission (``Node.submit_many``): one ticket per transaction, in submission order."""

from __future__ import annotations

import pytest

from blokauto.errors import BlokError
from tests.conftest import Env, demo_admin, digest

ADMIN = demo_admin("quickfix")


def test_tickets_resolve_in_order_with_receipts_and_refusals(env: Env) -> None:
    good = [env.sign("notary.anchor", ADMIN, n, {"digest": digest(f"bulk {n}"), "kind": "invoice"})
            for n in (1, 2, 3)]
    stale = env.sign("notary.anchor", ADMIN, 2, {"digest": digest("again"), "kind": "invoice"})
    broken = good[0][:-5] + b'AAAA"]}'  # signature no longer canonical / valid
    tickets = env.node.submit_many([good[0], broken, good[1], stale, good[2]], chunk=2)
    assert len(tickets) == 5
    receipts = [tickets[i].result(timeout=30) for i in (0, 2, 4)]
    assert [r["status"] for r in receipts] == ["ok", "ok", "ok"]
    assert [r["leaf_index"] for r in receipts] == sorted(r["leaf_index"] for r in receipts)
    for i, code in ((1, "bad_signature"), (3, "stale_nonce")):
        assert tickets[i].done()
        with pytest.raises(BlokError) as raised:
            tickets[i].result(timeout=1)
        assert raised.value.code == code
