"""The consortium around one demo ledger, as the scenario tests drive it: keys of the demo
organisations, a movable block clock, and a World that submits as any of them and checks what a
refusal must leave unchanged. The ``world`` fixture is registered in conftest.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from blokauto.client import Client
from blokauto.crypto.keys import Signer
from blokauto.vin import with_check_digit
from tests.conftest import PROBLEM, Env, demo_admin

MAKER = demo_admin("nordwerk")
DEALER = demo_admin("autohaus-lenz")
WORKSHOP = demo_admin("werkstatt-berg")
INSURER = demo_admin("alpina-insurance")
REGISTRY = demo_admin("kba-registry")
LENDER = demo_admin("hanse-bank")
RECYCLER = demo_admin("eco-recycling")
VOTERS = ["kestrel-parts", "autohaus-lenz", "werkstatt-berg", "quickfix"]   # with nordwerk: 5 of 9

OWNER1 = Signer.deterministic("tests/owner1")
OWNER2 = Signer.deterministic("tests/owner2")
OWNER3 = Signer.deterministic("tests/owner3")
DEVICE = Signer.deterministic("tests/device1")
DEVICE2 = Signer.deterministic("tests/device2")
STRANGER = Signer.deterministic("tests/stranger")
NORDBANK = Signer.deterministic("tests/nordbank/admin")

BMW_VIN = "WBA3A5C51CF256985"                          # Europe: no mandatory check digit, no year check
HONDA_VIN = with_check_digit("1HGCV1F30RA000001")      # North America: check digit; position 10 R = 2024
UNKNOWN_VIN = with_check_digit("1HGCV1F30RA999999")    # valid, never registered
HOUR_MS = 3_600_000
JAN_2027_MS = 1_798_761_600_000


def wrong_check_digit(vin: str) -> str:
    """``vin`` with a position-9 character that is not its check digit."""
    bad = "1" if vin[8] != "1" else "2"
    return vin[:8] + bad + vin[9:]


def registration(vin: str = BMW_VIN, device: Signer = DEVICE, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"vin": vin, "model": "Kestrel 3", "year": 2024 if vin[0] == "1" else 2012,
                               "powertrain": "ice", "device_key": device.did}
    payload.update(fields)
    return payload


def vehicle_event(receipt: dict[str, Any]) -> dict[str, Any]:
    """The one ``vehicle.event`` an accepted vehicle transaction emits."""
    events = [e for e in receipt["events"] if e["type"] == "vehicle.event"]
    assert len(events) == 1, receipt
    event: dict[str, Any] = events[0]
    return event


class Clock:
    """The node's block time is the wall clock plus ``offset_ms``: tests move time forward."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        """A time no later than the next block's."""
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms


class World:
    """The consortium around one demo ledger: a client per key, and what each submission left."""

    def __init__(self, env: Env, clock: Clock) -> None:
        self.env = env
        self.clock = clock
        self._clients: dict[str, Client] = {}
        self._reader: Client | None = None
        self.leaves: dict[str, list[int]] = {}      # VIN -> leaf indexes of every receipt naming it

    def client(self, key: Signer) -> Client:
        if key.did not in self._clients:
            self._clients[key.did] = self.env.client(key)
        return self._clients[key.did]

    @property
    def reader(self) -> Client:
        """A logged-in member (the registry) for member-only reads."""
        if self._reader is None:
            self._reader = self.env.client(REGISTRY)
            self._reader.login()
        return self._reader

    def submit(self, key: Signer, tx_type: str, payload: dict[str, Any],
               cosigners: Sequence[Signer] = ()) -> dict[str, Any]:
        receipt = self.client(key).submit(tx_type, payload, cosigners=cosigners)
        assert isinstance(receipt["leaf_index"], int), receipt
        if "vin" in payload:
            self.leaves.setdefault(payload["vin"], []).append(receipt["leaf_index"])
        return receipt

    def ok(self, key: Signer, tx_type: str, payload: dict[str, Any],
           cosigners: Sequence[Signer] = ()) -> dict[str, Any]:
        receipt = self.submit(key, tx_type, payload, cosigners)
        assert receipt["status"] == "ok", receipt
        return receipt

    def rejected(self, key: Signer, tx_type: str, payload: dict[str, Any], code: str,
                 cosigners: Sequence[Signer] = ()) -> dict[str, Any]:
        """A contract refusal: a leaf with its code, and no change but the signer's nonce."""
        vin = payload.get("vin")
        before = self.record(vin) if isinstance(vin, str) else None
        size = self.env.status()["log_size"]
        receipt = self.submit(key, tx_type, payload, cosigners)
        assert receipt["status"] == "rejected" and receipt.get("code") == code, receipt
        assert self.env.status()["log_size"] == size + 1
        if isinstance(vin, str):
            assert self.record(vin) == before
        return receipt

    def refused(self, key: Signer, tx_type: str, payload: dict[str, Any], code: str, status: int = 400,
                cosigners: Sequence[Signer] = ()) -> None:
        """A refusal at submission: problem+json, and nothing committed (no leaf, no nonce)."""
        before = self.env.snapshot(key.did)
        raw = self.client(key).build(tx_type, payload, cosigners=cosigners)
        response = self.env.post(raw)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["code"] == code, response.text
        assert self.env.snapshot(key.did) == before

    def state(self, key: str) -> Any:
        return self.reader.state(key)["value"]

    def record(self, vin: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.state(f"vehicle/{vin}")
        return value

    def register(self, vin: str = BMW_VIN, device: Signer = DEVICE, **fields: Any) -> dict[str, Any]:
        return self.ok(MAKER, "vehicle.register", registration(vin, device, **fields))

    def sell(self, vin: str = BMW_VIN, owner: Signer = OWNER1, km: int = 12) -> dict[str, Any]:
        return self.ok(DEALER, "title.first_sale", {"vin": vin, "owner": owner.did, "odometer_km": km},
                       cosigners=[owner])

    def vote(self, action: dict[str, Any]) -> dict[str, Any]:
        """A consortium change that passes at once: nordwerk proposes, four more organisations cosign."""
        receipt = self.ok(MAKER, "gov.propose", {"action": action},
                          cosigners=[demo_admin(org) for org in VOTERS])
        assert any(e["type"] == "proposal.executed" for e in receipt["events"]), receipt
        return receipt


@pytest.fixture
def world(env: Env, monkeypatch: pytest.MonkeyPatch) -> World:
    clock = Clock()
    apply_block = env.node.ledger.apply_block

    def shifted(txs: Any, time_ms: int, meta: Any = None) -> Any:
        return apply_block(txs, time_ms + clock.offset_ms, meta)

    monkeypatch.setattr(env.node.ledger, "apply_block", shifted)
    return World(env, clock)


