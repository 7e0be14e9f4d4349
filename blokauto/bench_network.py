"""Network speed: a local consortium (3 JetStream servers, 3 node processes) on this machine.

Load: pre-signed transactions published into the stream (what the nodes do after their stateless
check), so the figures are ordering + every node's checks, execution, commit and cosigning.
Throughput: half of them as fast as JetStream takes them, counted until every node holds a *final*
(quorum-signed) checkpoint covering all of them. Latency: the other half as a steady load at half
that rate, while a probe submits one transaction every 100 ms through a node's API and times it
until a final checkpoint covers it.
All three nodes verify and execute every transaction on the same 2 cores, so a single-node run
on this machine is the ceiling; the ratio printed says how close the network gets.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

from blokauto import demo
from blokauto.bench import machine_busy_s
from blokauto.client import Client
from blokauto.ledger.tx import sign_tx
from blokauto.network import local
from blokauto.ordering.jetstream import stream_id

Log = Callable[[str], None] | None


def _final_size(url: str) -> int:
    with Client(url) as c:
        info = c._json("GET", "/v1/network")
        final = info.get("final") or {}
        if not final:
            return 0
        return int(c.block(int(final["height"]))["header"]["log_size"])


def run_network_bench(n: int = 20_000, log: Log = None) -> dict[str, Any]:
    say = log or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="blokauto-bench-net-") as tmp:
        directory = Path(tmp)
        say("network: starting 3 JetStream servers and 3 node processes...")
        state = local.network_up(directory, orgs=3, servers=3)
        try:
            return _measure(state, n, say)
        finally:
            local.network_down(directory)


def _measure(state: dict[str, Any], n: int, say: Callable[[str], None]) -> dict[str, Any]:
    chain = state["chain"]
    urls = [node["api_url"] for node in state["nodes"]]
    signers = [demo.demo_admin(node["org"]) for node in state["nodes"] if node["org"] != "kestrel-parts"]
    say(f"network: signing {n} transactions (client side, not timed)...")
    raws = [sign_tx(chain, "notary.anchor", signers[i % len(signers)], i // len(signers) + 1,
                    {"digest": hashlib.sha256(b"net-%d" % i).hexdigest(), "kind": "invoice"}) for i in range(n)]
    subject = f"blokauto.{stream_id(chain)}.tx"
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        client = Client(urls[1], demo.demo_admin("kestrel-parts"))    # the bench load never signs as it
        k = 0
        while not stop.is_set():
            k += 1
            started = time.perf_counter()
            receipt = client.submit("notary.anchor", {"digest": hashlib.sha256(b"probe-%d" % k).hexdigest(),
                                                      "kind": "invoice"})
            while (_final_size(urls[1]) <= receipt["leaf_index"]) and time.perf_counter() - started < 30:
                time.sleep(0.01)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.1)

    async def publish(batch: list[bytes], rate: float | None) -> None:
        nc = await nats.connect(state["nats"][0]["url"])
        js = nc.jetstream()
        window = 64 if rate else 256
        began = time.perf_counter()
        for start in range(0, len(batch), window):
            if rate:   # paced: stay on the schedule of `rate` transactions per second
                delay = began + start / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*(js.publish(subject, raw, headers={"Nats-Msg-Id": hashlib.sha256(raw).hexdigest()})
                                   for raw in batch[start : start + window]))
        await nc.close()

    def wait_final(target: int, started: float) -> None:
        while min(_final_size(u) for u in urls) < target and time.perf_counter() - started < 600:
            time.sleep(0.1)

    # phase 1: saturate, for throughput
    saturate, paced = raws[: n // 2], raws[n // 2 :]
    say(f"network: publishing {len(saturate)} transactions as fast as the stream takes them...")
    base = min(_final_size(u) for u in urls)
    busy_before = machine_busy_s()
    started = time.perf_counter()
    asyncio.run(publish(saturate, None))
    wait_final(base + len(saturate), started)
    elapsed = time.perf_counter() - started
    busy_after = machine_busy_s()
    tps = len(saturate) / elapsed
    # phase 2: a steady load at half that rate, with the probe timing submission -> final checkpoint
    rate = max(50.0, tps / 2)
    say(f"network: steady load of {rate:,.0f} tx/s with a latency probe...")
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started2 = time.perf_counter()
    asyncio.run(publish(paced, rate))
    wait_final(base + n, started2)
    stop.set()
    prober.join(timeout=30)
    roots = set()
    for u in urls:
        with Client(u) as c:
            roots.add(c.status()["state_root"])
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")
    return {
        "transactions": n, "tx_per_s": tps, "seconds": elapsed, "steady_rate": rate,
        "final_latency_p50_s": statistics.median(ordered) if ordered else float("nan"),
        "final_latency_p99_s": p99, "probes": len(ordered), "converged": len(roots) == 1,
        "cpu_us_per_tx": None if busy_before is None or busy_after is None
        else (busy_after - busy_before) / len(saturate) * 1e6,
    }
