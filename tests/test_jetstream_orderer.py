"""The JetStream orderer against a real nats-server: every node must cut the same blocks.

Scripted streams (messages published straight into the stream, cut markers included) pin the
cutting rules exactly; live tests check the same through ``submit`` from several threads and
nodes, and across the restart of one server of a three-server cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from blokauto.crypto import canonical
from blokauto.demo import demo_admin
from blokauto.errors import BlokError, NetworkError
from blokauto.ledger.tx import SignedTx, parse_and_verify, sign_tx
from blokauto.node import check_stateless
from blokauto.ordering import jetstream
from blokauto.ordering.base import Batch
from blokauto.ordering.jetstream import JetStreamOrderer, check_message, parse_marker
from tests.nats_fixtures import NatsServer, free_port, nats_cluster, nats_server

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SIGNER = demo_admin("nordwerk")
_chains = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with nats_server(tmp_path_factory.mktemp("nats")) as srv:
        yield srv


@pytest.fixture
def chain() -> str:
    """A fresh chain id per test, hence a fresh stream on the shared server."""
    return f"test/chain/{next(_chains)}/{time.time_ns()}"


def raw_tx(chain: str, nonce: int, **payload: Any) -> bytes:
    body = {"digest": hashlib.sha256(f"{chain}/{nonce}".encode()).hexdigest(), "kind": "invoice", **payload}
    return sign_tx(chain, "notary.anchor", SIGNER, nonce, body)


def make_tx(chain: str, nonce: int) -> SignedTx:
    return parse_and_verify(raw_tx(chain, nonce), chain)


def bad_signature(raw: bytes) -> bytes:
    """The same transaction with one signature byte changed: well-formed, but it does not verify."""
    envelope = canonical.decode(raw)
    sig = envelope["signatures"][0]
    envelope["signatures"] = [("B" if sig[0] != "B" else "C") + sig[1:]]
    return canonical.encode(envelope)


def marker(by: str = "someorg") -> bytes:
    return canonical.encode({"by": by})


def summary(batches: list[Batch]) -> list[tuple[Any, ...]]:
    return [(tuple(t.hash_hex for t in b.txs), b.time_ms, b.position, tuple(b.dropped)) for b in batches]


def orderer(server: NatsServer, chain: str, org: str, **kwargs: Any) -> JetStreamOrderer:
    kwargs.setdefault("cut_interval_s", 60.0)  # scripted streams: no marker of ours may interfere
    return JetStreamOrderer([server.url], chain, org, **kwargs).start()


def collect(o: JetStreamOrderer, *, position: int | None = None, txs: int | None = None,
            timeout: float = 15.0) -> list[Batch]:
    """Batches until one ends at ``position`` or ``txs`` transactions came out."""
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while True:
        if position is not None and batches and batches[-1].position == position:
            return batches
        if txs is not None and sum(len(b.txs) for b in batches) >= txs:
            return batches
        assert time.monotonic() < deadline, f"timed out; got {summary(batches)}"
        batch = o.next_batch(0, 0.2)
        if batch is not None:
            batches.append(batch)


def publish_raw(server: NatsServer, messages: list[tuple[str, bytes]],
                headers: dict[str, str] | None = None) -> list[int]:
    """Publish straight into the stream (as a rogue or buggy member could); returns sequences."""
    async def run() -> list[int]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            return [(await js.publish(subject, data, headers=headers)).seq for subject, data in messages]
        finally:
            await nc.close()
    return asyncio.run(run())


def stream_headers(server: NatsServer, stream: str) -> list[tuple[str, dict[str, str]]]:
    async def run() -> list[tuple[str, dict[str, str]]]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(stream)).state.last_seq
            out = []
            for seq in range(1, last + 1):
                msg = await js.get_msg(stream, seq)
                out.append((msg.subject or "", dict(msg.headers or {})))
            return out
        finally:
            await nc.close()
    return asyncio.run(run())


def stored_times(server: NatsServer, stream: str) -> dict[int, int]:
    """Stream sequence -> the time (ms) the stream stored the message at, as the server reports it."""
    async def run() -> dict[int, int]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(stream)).state.last_seq
            out = {}
            for seq in range(1, last + 1):
                stamp = (await js.get_msg(stream, seq)).time
                assert stamp is not None
                out[seq] = (stamp - EPOCH) // timedelta(milliseconds=1)
            return out
        finally:
            await nc.close()
    return asyncio.run(run())


def create_stream(server: NatsServer, chain: str) -> JetStreamOrderer:
    """Stream created (and names known) without a running orderer that could publish markers."""
    o = orderer(server, chain, "setup")
    o.close()
    return o


# -- scripted streams: the cutting rules ------------------------------------------------------------


def test_scripted_stream_cut_split_and_resumed_identically(server: NatsServer, chain: str) -> None:
    names = create_stream(server, chain)
    tx, cut = names.tx_subject, names.cut_subject
    script: list[tuple[str, bytes]] = [(tx, raw_tx(chain, 1))]                     # 1: before any marker
    script += [(cut, marker())]                                                      # 2
    script += [(tx, raw_tx(chain, n)) for n in range(2, 32)]                          # 3..32: 30 txs, 12 a block
    script += [(cut, marker()), (cut, marker("other"))]                               # 33, 34: empty run
    script += [(tx, bad_signature(raw_tx(chain, 999))), (tx, b"\x00garbage")]       # 35, 36: all dropped
    script += [(cut, marker())]                                                       # 37
    script += [(tx, raw_tx(chain, n)) for n in range(32, 56)]                         # 38..61: 24 = 2 blocks
    script += [(cut, marker()), (cut, b'{"by": "x"}')]                                # 62, 63 (malformed)
    script += [(tx, raw_tx(chain, 56)), (tx, raw_tx(chain, 57)), (cut, marker())]     # 64, 65, 66
    seqs = publish_raw(server, script)
    assert seqs == list(range(1, 67))
    at = stored_times(server, names.stream_name)   # a run's time: when the stream stored its marker

    def hashes(*nonces: int) -> tuple[str, ...]:
        return tuple(make_tx(chain, n).hash_hex for n in nonces)

    expected = [
        (hashes(1), 42, 1, ()),
        (hashes(*range(2, 14)), at[2], 14, ()),
        (hashes(*range(14, 26)), at[2], 26, ()),
        (hashes(*range(26, 32)), at[2], 32, ()),
        ((), at[34], 36, (("35", "bad_signature"), ("36", "malformed_json"))),
        (hashes(*range(32, 44)), at[37], 49, ()),
        (hashes(*range(44, 56)), at[37], 61, ()),
        (hashes(56, 57), at[62], 65, ()),
    ]
    a = orderer(server, chain, "nordwerk", start_time_ms=42, max_block_txs=12)
    b = orderer(server, chain, "suedbau", start_time_ms=42, max_block_txs=12)
    try:
        got_a, got_b = collect(a, position=65), collect(b, position=65)
        assert summary(got_a) == summary(got_b) == expected
        assert a.depth() == 0 and b.next_batch(0, 0.05) is None
    finally:
        a.close()
        b.close()

    # a node restarted after any block cuts exactly the blocks that followed it
    for k, (_, time_ms, position, _) in enumerate(expected[:-1]):
        restarted = orderer(server, chain, "nordwerk", start_after=position, start_time_ms=time_ms,
                            max_block_txs=12)
        try:
            assert summary(collect(restarted, position=65)) == expected[k + 1:], f"resumed after block {k}"
        finally:
            restarted.close()


def test_bad_messages_are_dropped_by_every_node(server: NatsServer, chain: str) -> None:
    names = create_stream(server, chain)
    good = raw_tx(chain, 1)
    wrong_chain = raw_tx("other/chain", 2)
    bad_payload = raw_tx(chain, 3, label="x" * 500)          # Anchor.label is at most 200 characters
    garbage = b"\xff\xfe not json"
    bad = [bad_signature(good), garbage, wrong_chain, bad_payload]
    script = [(names.tx_subject, raw) for raw in bad] + [(names.tx_subject, good), (names.cut_subject, marker())]
    publish_raw(server, script)

    codes = []
    for raw in bad:        # the orderer's check refuses exactly as the node's submission check
        with pytest.raises(BlokError) as node_refusal:
            check_stateless(raw, chain)
        with pytest.raises(BlokError) as orderer_refusal:
            check_message(raw, chain)
        assert orderer_refusal.value.code == node_refusal.value.code
        codes.append(node_refusal.value.code)
    assert codes == ["bad_signature", "malformed_json", "wrong_chain", "bad_payload"]

    nodes = [orderer(server, chain, org) for org in ("nordwerk", "suedbau")]
    try:
        for o in nodes:
            (batch,) = collect(o, position=5)
            assert [t.raw for t in batch.txs] == [good]
            assert batch.dropped == [(str(seq), code) for seq, code in zip(range(1, 5), codes, strict=True)]
            assert batch.time_ms == 0 and batch.position == 5
    finally:
        for o in nodes:
            o.close()


def test_own_checked_submissions_are_not_checked_twice(chain: str) -> None:
    """A node's cutter reuses the checks the node ran before publishing; bytes it did not check itself
    (another node's submission, a rogue publisher's) get the full checks."""
    cutter = jetstream.BlockCutter(chain, "tx", "cut", max_block_txs=10, run_time_ms=0)
    own = make_tx(chain, 1)
    cutter.checked[hashlib.sha256(own.raw).digest()] = own
    cutter.feed(1, "tx", own.raw)
    assert cutter.txs == [own] and cutter.txs[0] is own and not cutter.checked
    cutter.feed(2, "tx", own.raw)                     # a replayed copy: checked again (the nonce rule refuses it)
    assert cutter.txs[1] is not own and cutter.txs[1].raw == own.raw
    cutter.feed(3, "tx", bad_signature(raw_tx(chain, 2)))
    assert cutter.dropped == [("3", "bad_signature")]


def test_malformed_cut_markers_are_ignored(server: NatsServer, chain: str) -> None:
    names = create_stream(server, chain)
    malformed = [
        b"garbage",
        b'{"by": "a"}',                                             # not canonical
        canonical.encode({"by": "a", "time_ms": 5}),                # a member may not choose the time
        canonical.encode({"time_ms": 5}),
        canonical.encode({"by": ""}),
        canonical.encode({"by": 5}),
        b'{"by":"a","x":5.5}',
        canonical.encode([1, 2]),
        canonical.encode({"by": "a" * 300}),                        # larger than any marker
    ]
    assert not any(parse_marker(m) for m in malformed) and parse_marker(marker())
    script = [(names.cut_subject, marker()), (names.tx_subject, raw_tx(chain, 1))]
    script += [(names.cut_subject, m) for m in malformed]
    script += [(names.tx_subject, raw_tx(chain, 2)), (names.cut_subject, marker())]
    publish_raw(server, script)
    opened_at = stored_times(server, names.stream_name)[1]
    nodes = [orderer(server, chain, org) for org in ("nordwerk", "suedbau")]
    try:
        for o in nodes:
            (batch,) = collect(o, position=len(script) - 1)
            assert [t.nonce for t in batch.txs] == [1, 2] and batch.time_ms == opened_at
            assert batch.dropped == [] and o.depth() == 0
    finally:
        for o in nodes:
            o.close()


# -- live: submission, markers, dedupe ------------------------------------------------------------------


def submit_concurrently(targets: list[JetStreamOrderer], chain: str, per_thread: int) -> list[int]:
    seqs: list[int] = []
    lock = threading.Lock()

    def work(i: int, o: JetStreamOrderer) -> None:
        for n in range(per_thread):
            seq = o.submit(make_tx(chain, 1 + i * per_thread + n))
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=work, args=(i, o)) for i, o in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return seqs


def test_two_nodes_see_identical_batches_under_concurrent_submission(server: NatsServer, chain: str) -> None:
    a = orderer(server, chain, "nordwerk", cut_interval_s=0.01, max_block_txs=16)
    b = orderer(server, chain, "suedbau", cut_interval_s=0.01, max_block_txs=16)
    total = 4 * 60
    results: dict[str, list[Batch]] = {}
    collectors = [threading.Thread(target=lambda o=o, k=k: results.__setitem__(k, collect(o, txs=total)))
                  for k, o in (("a", a), ("b", b))]
    try:
        for t in collectors:
            t.start()
        seqs = submit_concurrently([a, b, a, b], chain, total // 4)
        for t in collectors:
            t.join(timeout=30)
        assert len(set(seqs)) == total
        assert summary(results["a"]) == summary(results["b"])
        hashes = [t.hash_hex for batch in results["a"] for t in batch.txs]
        assert sorted(hashes) == sorted(make_tx(chain, n).hash_hex for n in range(1, total + 1))
        assert all(1 <= len(batch.txs) <= 16 for batch in results["a"])
        positions = [batch.position or 0 for batch in results["a"]]
        assert positions == sorted(positions) and positions[-1] >= max(seqs)
        assert a.depth() == 0 and b.depth() == 0
        # markers of both nodes for the same position were stored once
        markers = [h["Nats-Msg-Id"] for subject, h in stream_headers(server, a.stream_name) if subject == a.cut_subject]
        assert len(markers) == len(set(markers)) >= 1
    finally:
        a.close()
        b.close()


def test_duplicate_submission_is_stored_once(server: NatsServer, chain: str) -> None:
    a = orderer(server, chain, "nordwerk", cut_interval_s=0.01)
    b = orderer(server, chain, "suedbau", cut_interval_s=0.01)
    try:
        tx = make_tx(chain, 1)
        assert {a.submit(tx), b.submit(tx), a.submit(tx)} == {1}
        second = a.submit(make_tx(chain, 2))
        assert second > 1
        for o in (a, b):
            got = collect(o, txs=2)
            assert [t.nonce for batch in got for t in batch.txs] == [1, 2]
        subjects = [subject for subject, _ in stream_headers(server, a.stream_name)]
        assert subjects.count(a.tx_subject) == 2
    finally:
        a.close()
        b.close()


def test_front_run_copy_with_bad_signature_cannot_shadow_the_honest_one(server: NatsServer, chain: str) -> None:
    """Nats-Msg-Id covers the wire bytes (signatures included): a copy with a bad signature published
    first is just another message every node drops; the honest submission is stored and ordered."""
    names = create_stream(server, chain)
    tx = make_tx(chain, 1)
    forged = bad_signature(tx.raw)
    (seq,) = publish_raw(server, [(names.tx_subject, forged)],
                         headers={"Nats-Msg-Id": hashlib.sha256(forged).hexdigest()})
    o = orderer(server, chain, "nordwerk")
    try:
        assert o.submit(tx) == seq + 1
    finally:
        o.close()


def test_resuming_past_the_end_of_the_stream_is_refused(server: NatsServer, chain: str) -> None:
    """A node whose committed position lies beyond the stream (recreated or lost) must not wait forever."""
    with pytest.raises(NetworkError) as lost:
        orderer(server, chain, "nordwerk", start_after=1000)
    assert lost.value.code == "ordering_history_lost"


def test_unreachable_service_is_a_503(server: NatsServer, chain: str) -> None:
    with pytest.raises(NetworkError) as refused:
        JetStreamOrderer([f"nats://127.0.0.1:{free_port()}"], chain, "nordwerk",
                         connect_options={"max_reconnect_attempts": 1, "connect_timeout": 0.5}).start()
    assert refused.value.code == "ordering_unavailable" and refused.value.http_status == 503
    o = orderer(server, chain, "nordwerk")
    o.close()
    with pytest.raises(NetworkError) as closed:
        o.submit(make_tx(chain, 1))
    assert closed.value.code == "ordering_unavailable" and closed.value.http_status == 503


# -- a three-server cluster: one server restarts under load ------------------------------------------


def test_survives_restart_of_one_of_three_servers(tmp_path: Path, chain: str) -> None:
    """The server node a is connected to stops for longer than three heartbeats (its consumers and
    maybe the stream leader go with it) while both nodes keep submitting; nothing is lost or reordered."""
    with nats_cluster(tmp_path) as servers:
        urls = [s.url for s in servers]
        pinned = {"dont_randomize": True}
        a = JetStreamOrderer(urls, chain, "nordwerk", cut_interval_s=0.02, max_block_txs=25,
                             connect_options=pinned).start()
        b = JetStreamOrderer(urls[::-1], chain, "suedbau", cut_interval_s=0.02, max_block_txs=25,
                             connect_options=pinned).start()
        results: dict[str, list[Batch]] = {}
        try:
            nonce = itertools.count(1)
            for _ in range(40):
                (a, b)[_ % 2].submit(make_tx(chain, next(nonce)))
            servers[0].stop()
            outage_end = time.monotonic() + (jetstream.MISSED_HEARTBEATS + 1) * jetstream.HEARTBEAT_S
            while time.monotonic() < outage_end:
                n = next(nonce)
                (a, b)[n % 2].submit(make_tx(chain, n))
                time.sleep(0.02)                 # pacing the load over the outage, not a wait for a result
            servers[0].start()
            for _ in range(40):
                n = next(nonce)
                (a, b)[n % 2].submit(make_tx(chain, n))
            total = next(nonce) - 1
            for key, o in (("a", a), ("b", b)):
                results[key] = collect(o, txs=total, timeout=30)
            assert summary(results["a"]) == summary(results["b"])
            nonces = [t.nonce for batch in results["a"] for t in batch.txs]
            assert sorted(nonces) == list(range(1, total + 1))
        finally:
            a.close()
            b.close()


def test_submit_gives_up_with_503_when_no_server_answers(tmp_path: Path, chain: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jetstream, "SUBMIT_DEADLINE_S", 0.5)
    with nats_server(tmp_path) as srv:
        o = JetStreamOrderer([srv.url], chain, "nordwerk").start()
        try:
            srv.stop()
            with pytest.raises(NetworkError) as refused:
                o.submit(make_tx(chain, 1))
            assert refused.value.code == "ordering_unavailable" and refused.value.http_status == 503
        finally:
            o.close()
