"""What a node needs to join a consortium network (``blokauto serve --network FILE``).

The file names the chain, the node's organisation, the nats servers of the ordering cluster
and, for a real deployment, the TLS and credentials each organisation got from the operators.
It is JSON so that operators can write it by hand; unknown fields are refused so that a typo
never silently falls back to a default.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import msgspec

from blokauto.errors import InputError

NATS_SCHEMES = ("nats://", "tls://")
RECONNECT_TIME_WAIT_S = 0.25


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Client TLS towards the nats servers: the consortium's CA, and a client certificate if mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")


class NetworkConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One node's view of the network. ``api_url`` is informative (status tools print it)."""

    chain: Annotated[str, msgspec.Meta(min_length=3, max_length=100, pattern=r"^[a-z0-9][a-z0-9./_-]*$")]
    org: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    # Block cutting is network-wide and set by genesis (``ordering.max_block_txs``); a value here is
    # only a cross-check, refused when it differs. How soon a node asks for a cut is its own.
    max_block_txs: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    cut_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 50
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    tls: TlsConfig | None = None
    credentials_file: str | None = None
    api_url: str | None = None

    def __post_init__(self) -> None:
        for url in self.servers:
            if not url.startswith(NATS_SCHEMES) or len(url) <= len("nats://"):
                raise ValueError(f"servers: {url!r} is not a nats:// or tls:// URL")


def _resolve(base: Path, value: str | None) -> str | None:
    """Relative file names in a network file mean: next to that file, wherever the node is started."""
    if value is None or os.path.isabs(value):
        return value
    return str(base / value)


def load_network_config(path: Path | str) -> NetworkConfig:
    """Read and check a network file; every problem is one ``bad_network_config`` error naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read network config {path}: {exc.strerror or exc}",
                         code="bad_network_config") from None
    try:
        cfg = msgspec.json.decode(raw, type=NetworkConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InputError(f"network config {path}: {exc}", code="bad_network_config") from None
    base = path.resolve().parent
    tls = cfg.tls
    if tls is not None:
        tls = TlsConfig(ca_file=_resolve(base, tls.ca_file), cert_file=_resolve(base, tls.cert_file),
                        key_file=_resolve(base, tls.key_file))
    return msgspec.structs.replace(cfg, tls=tls, credentials_file=_resolve(base, cfg.credentials_file))


def write_network_config(path: Path | str, cfg: NetworkConfig) -> None:
    """Write atomically (a reader never sees half a file), indented for the operator's eyes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = msgspec.json.format(msgspec.json.encode(cfg), indent=2) + b"\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)


def connect_options(cfg: NetworkConfig) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect(cfg.servers, **options)``: TLS, credentials, reconnect forever.

    Servers and the connection name are left to the caller (the orderer and the cosigner name
    their own connections). A node must outlive any one nats server (and the whole cluster's
    restart), so it never gives up reconnecting; the short wait keeps a failover within a block
    interval or two.
    """
    options: dict[str, Any] = {
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_TIME_WAIT_S,
        "connect_timeout": 2,
    }
    if cfg.tls is not None:
        for name in (cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file):
            if name is not None and not os.path.isfile(name):
                raise InputError(f"network config TLS: no file {name}", code="bad_network_config")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls.ca_file)
            if cfg.tls.cert_file is not None:
                context.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"network config TLS: {exc}", code="bad_network_config") from None
        options["tls"] = context
    if cfg.credentials_file is not None:
        if not os.path.isfile(cfg.credentials_file):
            raise InputError(f"network config: no credentials file {cfg.credentials_file}",
                             code="bad_network_config")
        options["user_credentials"] = cfg.credentials_file
    return options
