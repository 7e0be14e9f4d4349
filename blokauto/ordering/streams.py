"""One JetStream helper the orderer, the cosigner and the off-chain replicator share."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors
import nats.js.errors

RETRYABLE = (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError,
             nats.errors.NoRespondersError)


async def ensure_stream(js: Any, config: Any, timeout_s: float) -> Any:
    """The stream's info, creating it with ``config`` if missing (several nodes may race: the loser
    finds it made). A cluster still electing its JetStream leader answers with timeouts or
    "unavailable" for a while (servers just started, a loaded machine): retry until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                return await js.stream_info(config.name)
            except nats.js.errors.NotFoundError:
                try:
                    return await js.add_stream(config)
                except nats.js.errors.BadRequestError:   # created meanwhile by another node
                    return await js.stream_info(config.name)
        except RETRYABLE:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
