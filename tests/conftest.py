"""Shared fixtures: a fresh demo ledger per test, served through FastAPI's TestClient."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from blokauto.api.app import create_app
from blokauto.client import Client
from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_TX, Signer, b64
from blokauto.demo import OPERATOR_ORG, demo_admin, demo_genesis, demo_member, demo_node_key
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, init_ledger

GENESIS_TIME_MS = 1_700_000_000_000
PROBLEM = "application/problem+json"

__all__ = ["PROBLEM", "Env", "demo_admin", "demo_member", "digest", "envelope", "sign_body"]


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def sign_body(body: dict[str, Any], signers: Sequence[Signer]) -> list[str]:
    """Signatures over ``body`` as it stands (no canonical checks: for hand-made bad envelopes)."""
    body_bytes = canonical.encode_trusted(body)
    return [b64(s.sign(DOMAIN_TX, body_bytes)) for s in signers]


def envelope(body: Any, signatures: Any) -> bytes:
    """Sorted, compact wire bytes of an envelope without the canonical-subset checks."""
    return canonical.encode_trusted({"body": body, "signatures": signatures})


@dataclass
class Env:
    tc: TestClient
    node: Node

    @property
    def chain(self) -> str:
        return self.node.chain

    def client(self, key: Signer | None = None) -> Client:
        return Client("http://testserver", key, transport=self.tc._transport)

    def sign(self, tx_type: str, signer: Signer, nonce: int, payload: dict[str, Any],
             cosigners: Sequence[Signer] = ()) -> bytes:
        return sign_tx(self.chain, tx_type, signer, nonce, payload, cosigners)

    def post(self, raw: bytes, **kwargs: Any) -> httpx.Response:
        return self.tc.post("/v1/tx", content=raw, headers={"Content-Type": "application/json"}, **kwargs)

    def status(self) -> dict[str, Any]:
        return self.tc.get("/v1/status").json()  # type: ignore[no-any-return]

    def nonce(self, did: str) -> dict[str, Any]:
        return self.tc.get(f"/v1/accounts/{did}/nonce").json()  # type: ignore[no-any-return]

    def snapshot(self, *dids: str) -> tuple[Any, ...]:
        """What a refused submission must leave unchanged: head, log and the signers' nonces."""
        s = self.status()
        return (s["height"], s["log_size"], s["log_root"], s["state_root"], *(self.nonce(d) for d in dids))

    def token(self, key: Signer) -> dict[str, str]:
        client = self.client(key)
        return {"Authorization": f"Bearer {client.login()}"}


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    data_dir = tmp_path / "node"
    init_ledger(data_dir, demo_genesis(time_ms=GENESIS_TIME_MS), OPERATOR_ORG,
                demo_node_key(OPERATOR_ORG).signing_key)
    with Node(data_dir) as node, TestClient(create_app(node), raise_server_exceptions=False) as tc:
        yield Env(tc, node)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_node(tmp_path: Any) -> Iterator[str]:
    data = tmp_path / "node"
    init_ledger(data, demo_genesis(), OPERATOR_ORG, demo_node_key(OPERATOR_ORG).signing_key)
    port = free_port()
    with Node(data) as node:
        server = uvicorn.Server(uvicorn.Config(create_app(node), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "the node did not start serving"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


from tests.worlds import world  # noqa: E402, F401  (the scenario tests' consortium fixture)
