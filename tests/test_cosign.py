"""Checkpoint cosigning over a real JetStream server: quorum, conflicts, forgeries, restarts, late joiners."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from blokauto.crypto.keys import Signer
from blokauto.crypto.note import Checkpoint, format_note, open_checkpoint, parse_note, sign_note, verifier_key
from blokauto.ledger.chain import CheckpointSigner, block_extension
from blokauto.network.cosign import Cosigner, sigs_stream_name, sigs_subject, stream_id
from tests.nats_fixtures import NATS_SERVER, NatsServer, nats_server

pytestmark = pytest.mark.slow

WAIT_S = 10.0
_chains = itertools.count(1)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One JetStream server for the module; each test uses its own chain, hence its own stream."""
    if not NATS_SERVER.exists():
        pytest.skip("nats-server not installed in the venv")
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@dataclass
class Org:
    org_id: str
    signer: CheckpointSigner
    vkey: str

    def note(self, chain: str, height: int, variant: str = "") -> str:
        return self.signer.sign(checkpoint(chain, height, variant))


def make_org(chain: str, org_id: str) -> Org:
    key = Signer.deterministic(f"t/{org_id}/node")
    name = f"{chain}/{org_id}"
    return Org(org_id, CheckpointSigner(name, key.signing_key), verifier_key(name, key.public_key))


def checkpoint(chain: str, height: int, variant: str = "") -> Checkpoint:
    """A stand-in for block ``height``'s checkpoint; ``variant`` makes a diverging node's version."""
    root = hashlib.sha256(f"{chain}/root/{height}{variant}".encode()).digest()
    block_hash = hashlib.sha256(f"{chain}/block/{height}{variant}".encode()).digest()
    return Checkpoint(chain, 3 * height, root, (block_extension(height, block_hash),))


class Net:
    """Orgs of one fresh chain and the cosigners started for them (closed at the end)."""

    def __init__(self, url: str, root: Path, org_ids: str = "abcd", quorum: int = 2) -> None:
        self.url = url
        self.root = root
        self.chain = f"test.example/cosign{next(_chains)}-{os.getpid()}"
        self.orgs = {o: make_org(self.chain, o) for o in org_ids}
        self.keys = sorted(o.vkey for o in self.orgs.values())
        self.quorum = quorum
        self.started: list[Cosigner] = []

    def cosigner(self, org_id: str, start: bool = True) -> Cosigner:
        cs = Cosigner([self.url], self.chain, org_id, self.root / org_id,
                      keys=lambda: list(self.keys), quorum=lambda: self.quorum)
        self.started.append(cs)
        return cs.start() if start else cs

    def name(self, org_id: str) -> str:
        return self.orgs[org_id].signer.name

    def close(self) -> None:
        for cs in self.started:
            cs.close()


@pytest.fixture
def net(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Net]]:
    made: list[Net] = []

    def make(**kwargs: object) -> Net:
        n = Net(nats_url, tmp_path, **kwargs)  # type: ignore[arg-type]
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def publish_raw(url: str, chain: str, note: str) -> None:
    """What a malicious or buggy participant can do: put any bytes on the SIGS subject."""
    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().publish(sigs_subject(chain), note.encode(), stream=sigs_stream_name(chain))
        finally:
            await nc.close()

    asyncio.run(go())


def text_of(note: str) -> str:
    return parse_note(note)[0]


def test_names_follow_the_adr() -> None:
    sid = hashlib.sha256(b"blokauto.example/demo").hexdigest()[:16]
    assert stream_id("blokauto.example/demo") == sid
    assert sigs_stream_name("blokauto.example/demo") == f"BLOKAUTO_{sid}_SIGS"
    assert sigs_subject("blokauto.example/demo") == f"blokauto.{sid}.sig"


def test_quorum_finalises_every_height_and_names_the_diverging_node(net: Callable[..., Net]) -> None:
    n = net(org_ids="abc")
    cs = {o: n.cosigner(o) for o in "abc"}
    for height in range(1, 21):
        for o, c in cs.items():
            variant = "-diverged" if (o == "c" and height == 7) else ""
            c.publish(height, n.orgs[o].note(n.chain, height, variant))

    for height in range(1, 21):
        for o, c in cs.items():
            if o == "c" and height == 7:
                continue
            final = c.wait_final(height, WAIT_S)
            assert final is not None, (o, height)
            cp, signers = open_checkpoint(final, n.keys, 2, origin=n.chain)
            assert cp == checkpoint(n.chain, height)
            assert len(signers) >= 2
            assert set(c.signers(height)) >= set(signers)
        texts = {text_of(c.final(height) or "") for o, c in cs.items() if not (o == "c" and height == 7)}
        assert len(texts) == 1
    assert cs["a"].latest_final() is not None
    assert cs["a"].latest_final()[0] == 20  # type: ignore[index]

    # Height 7: a and b agree and finalise without c; c's note is evidence naming c, never merged.
    for o in "ab":
        _, signers = open_checkpoint(cs[o].final(7) or "", n.keys, 2)
        assert signers == sorted([n.name("a"), n.name("b")])
        conflicts = cs[o].conflicts()
        assert [(x["height"], x["signer"]) for x in conflicts] == [(7, n.name("c"))]
        assert conflicts[0]["note"] == n.orgs["c"].note(n.chain, 7, "-diverged")
        assert conflicts[0]["ours"] == n.orgs[o].note(n.chain, 7)
    # From c's side, a and b are the ones who differ, and c's own height 7 never becomes final.
    assert cs["c"].final(7) is None
    assert sorted(x["signer"] for x in cs["c"].conflicts()) == sorted([n.name("a"), n.name("b")])
    assert cs["c"].signers(7) == [n.name("c")]


def test_forged_and_unknown_signatures_are_ignored(net: Callable[..., Net]) -> None:
    n = net(org_ids="ab")
    a = n.cosigner("a")
    a.publish(1, n.orgs["a"].note(n.chain, 1))

    # b's key name and key hash, but not b's signature: same text (would complete a quorum) ...
    genuine = sign_note(checkpoint(n.chain, 1).to_text(), n.name("b"), n.orgs["b"].signer.key)
    sig = parse_note(format_note(checkpoint(n.chain, 1).to_text(), [genuine]))[1][0]
    forged_line = type(sig)(sig.name, sig.key_hash, bytes(64)).to_line()
    publish_raw(n.url, n.chain, format_note(checkpoint(n.chain, 1).to_text(), [forged_line]))
    # ... and a different text (would be a conflict naming b).
    other = checkpoint(n.chain, 1, "-forged").to_text()
    publish_raw(n.url, n.chain, format_note(other, [forged_line]))
    # A signer nobody trusts, and bytes that are no note at all.
    stranger = make_org(n.chain, "stranger")
    publish_raw(n.url, n.chain, stranger.note(n.chain, 1, "-stranger"))
    publish_raw(n.url, n.chain, stranger.note(n.chain, 1))
    publish_raw(n.url, n.chain, "not a note")

    # The stream is ordered: once b's genuine height 2 is final on a, all of the above was read.
    a.publish(2, n.orgs["a"].note(n.chain, 2))
    publish_raw(n.url, n.chain, n.orgs["b"].note(n.chain, 2))
    assert a.wait_final(2, WAIT_S) is not None

    assert a.final(1) is None
    assert a.signers(1) == [n.name("a")]
    assert a.conflicts() == []

    # The real b signature still completes height 1.
    publish_raw(n.url, n.chain, n.orgs["b"].note(n.chain, 1))
    final = a.wait_final(1, WAIT_S)
    assert final is not None
    assert open_checkpoint(final, n.keys, 2)[1] == sorted([n.name("a"), n.name("b")])


def test_restart_keeps_finals_and_catches_up(net: Callable[..., Net]) -> None:
    n = net(org_ids="abc")
    cs = {o: n.cosigner(o) for o in "abc"}
    for height in range(1, 6):
        for o, c in cs.items():
            c.publish(height, n.orgs[o].note(n.chain, height))
    for height in range(1, 6):
        assert cs["c"].wait_final(height, WAIT_S) is not None
    before = {h: cs["c"].final(h) for h in range(1, 6)}
    cs["c"].close()

    # While c is down, a and b go on.
    for height in range(6, 11):
        for o in "ab":
            cs[o].publish(height, n.orgs[o].note(n.chain, height))
    for height in range(6, 11):
        assert cs["a"].wait_final(height, WAIT_S) is not None

    # Same data dir: finals are there before any network; then c's node catches up.
    again = n.cosigner("c", start=False)
    for height, note in before.items():       # signatures may have been added after the snapshot
        kept = again.final(height)
        assert kept is not None and text_of(kept) == text_of(note or "")
        assert set(open_checkpoint(kept, n.keys, 2)[1]) >= set(open_checkpoint(note or "", n.keys, 2)[1])
    assert again.latest_final() is not None
    again.start()
    for height in range(6, 11):
        again.publish(height, n.orgs["c"].note(n.chain, height))
    for height in range(6, 11):
        final = again.wait_final(height, WAIT_S)
        assert final is not None
        assert text_of(final) == text_of(cs["a"].final(height) or "")
        assert n.name("c") in open_checkpoint(final, n.keys, 2)[1]
    # c's late signatures reach the others too.
    for height in range(6, 11):
        deadline = time.monotonic() + WAIT_S
        while n.name("c") not in cs["a"].signers(height) and time.monotonic() < deadline:
            cs["a"].wait_final(10_000, 0.02)     # a bounded wait, not a correctness sleep
        assert n.name("c") in cs["a"].signers(height)


def test_late_fourth_cosigner_reads_the_history(net: Callable[..., Net]) -> None:
    n = net(org_ids="abcd")
    cs = {o: n.cosigner(o) for o in "abc"}
    for height in range(1, 11):
        for o, c in cs.items():
            c.publish(height, n.orgs[o].note(n.chain, height))
    for height in range(1, 11):
        assert cs["a"].wait_final(height, WAIT_S) is not None

    d = n.cosigner("d")
    for height in range(1, 11):
        d.publish(height, n.orgs["d"].note(n.chain, height))
    for height in range(1, 11):
        final = d.wait_final(height, WAIT_S)
        assert final is not None
        assert text_of(final) == text_of(cs["a"].final(height) or "")
        _, signers = open_checkpoint(final, n.keys, 2, origin=n.chain)
        assert n.name("d") in signers and len(signers) >= 2
    assert d.latest_final() is not None
    assert d.latest_final()[0] == 10  # type: ignore[index]
    assert d.conflicts() == []


def test_publish_refuses_a_note_for_another_height(net: Callable[..., Net]) -> None:
    n = net(org_ids="ab")
    a = n.cosigner("a", start=False)
    with pytest.raises(Exception, match="height 3"):
        a.publish(3, n.orgs["a"].note(n.chain, 4))


def test_a_signer_trusted_later_is_merged_from_the_buffer(net: Callable[..., Net]) -> None:
    """Keys come from ledger state: a note that arrived before its signer's key did (a catching-up
    node, an organisation added by a later block) is kept and verified when our own note arrives."""
    n = net(org_ids="abd")
    n.keys = sorted([n.orgs["a"].vkey, n.orgs["b"].vkey])          # d is not trusted yet
    a = n.cosigner("a")
    publish_raw(n.url, n.chain, n.orgs["d"].note(n.chain, 1))
    a.publish(2, n.orgs["a"].note(n.chain, 2))                      # sentinel: d's note was read first
    publish_raw(n.url, n.chain, n.orgs["b"].note(n.chain, 2))
    assert a.wait_final(2, WAIT_S) is not None

    n.keys = sorted(o.vkey for o in n.orgs.values())                # the block adding d is committed
    a.publish(1, n.orgs["a"].note(n.chain, 1))
    final = a.wait_final(1, WAIT_S)
    assert final is not None
    assert open_checkpoint(final, n.keys, 2)[1] == sorted([n.name("a"), n.name("d")])


def test_server_outage_our_unsent_note_goes_out_after_restart(tmp_path: Path) -> None:
    """A note recorded while the server was down is sent by the next start (same data dir), and
    consumers that lost their server-side state pick up again."""
    if not NATS_SERVER.exists():
        pytest.skip("nats-server not installed in the venv")
    server = NatsServer(tmp_path / "nats").start()
    n = Net(server.url, tmp_path, org_ids="ab")
    try:
        a, b = n.cosigner("a"), n.cosigner("b")
        for o, c in (("a", a), ("b", b)):
            c.publish(1, n.orgs[o].note(n.chain, 1))
        assert a.wait_final(1, WAIT_S) is not None

        server.stop()
        a.publish(2, n.orgs["a"].note(n.chain, 2))
        assert a.wait_final(1, 0) is not None          # reads still work without the server
        a.close()                                       # recorded, never acknowledged
        with sqlite3.connect(tmp_path / "a" / "cosign.sqlite") as db:
            assert db.execute("SELECT published FROM own_checkpoints WHERE height=2").fetchone() == (0,)

        server.start()
        b.publish(2, n.orgs["b"].note(n.chain, 2))
        again = n.cosigner("a")
        for c in (again, b):
            final = c.wait_final(2, WAIT_S)
            assert final is not None
            assert open_checkpoint(final, n.keys, 2)[1] == sorted([n.name("a"), n.name("b")])
    finally:
        n.close()
        server.stop()
