"""Prometheus metrics of a node (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

HEIGHT = Gauge("blokauto_height", "Height of the last committed block", registry=REGISTRY)
LOG_SIZE = Gauge("blokauto_log_size", "Leaves in the transaction log", registry=REGISTRY)
QUEUE_DEPTH = Gauge("blokauto_queue_depth", "Transactions waiting to be ordered into a block", registry=REGISTRY)
COMMITTED = Counter("blokauto_transactions_committed", "Transactions committed into blocks (as leaves)",
                    ["status"], registry=REGISTRY)
REJECTIONS = Counter("blokauto_rejections", "Refused transactions by stable error code and stage",
                     ["code", "stage"], registry=REGISTRY)
BLOCK_SECONDS = Histogram("blokauto_block_commit_seconds", "Time to execute and commit one block",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY)
BLOCKS = Counter("blokauto_blocks", "Blocks committed", registry=REGISTRY)
