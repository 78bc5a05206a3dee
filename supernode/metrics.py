"""Prometheus metrics, read from the node's own counters at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from supernode.node import Supernode


class NodeCollector:
    def __init__(self, node: Supernode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        env = CounterMetricFamily(
            "supernode_envelopes",
            "Envelopes by intake verdict and reason",
            labels=["verdict", "reason"],
        )
        for key, n in sorted(node.intake.counts.items()):
            verdict, _, reason = key.partition(":")
            env.add_metric([verdict, reason], n)
        yield env
        pushed = CounterMetricFamily(
            "supernode_push_envelopes", "Envelopes pushed", labels=["peer"]
        )
        push_batches = CounterMetricFamily(
            "supernode_push_batches", "Push batches a peer took", labels=["peer"]
        )
        failed = CounterMetricFamily(
            "supernode_push_failed_batches", "Push batches that ran out of retries", labels=["peer"]
        )
        dropped = CounterMetricFamily(
            "supernode_push_dropped", "Envelopes left to anti-entropy", labels=["peer"]
        )
        queue = GaugeMetricFamily("supernode_push_queue", "Envelopes waiting", labels=["peer"])
        for addr, link in node.gossip.links.items():
            pushed.add_metric([addr], link.sent)
            push_batches.add_metric([addr], link.batches)
            failed.add_metric([addr], link.failed_batches)
            dropped.add_metric([addr], link.dropped)
            queue.add_metric([addr], len(link.queue))
        yield from (pushed, push_batches, failed, dropped, queue)
        yield CounterMetricFamily(
            "supernode_anti_entropy_stored", "Envelopes stored from pulls", value=node.gossip.pulled
        )
        sizes = GaugeMetricFamily(
            "supernode_memory_entries", "Entries of the daemon's in-memory maps", labels=["map"]
        )
        for name, n in sorted(node.memory_sizes().items()):
            sizes.add_metric([name], n)
        yield sizes
        conns = node.connections
        open_ = GaugeMetricFamily(
            "supernode_connections_open", "HTTP connections open", labels=["client"]
        )
        open_.add_metric(["outsider"], conns.outsiders_open)
        open_.add_metric(["member"], sum(conns.by_address.values()) - conns.outsiders_open)
        yield open_
        yield CounterMetricFamily(
            "supernode_connections_refused",
            "Connections closed at accept: over the per-address or outsiders' cap",
            value=conns.refused,
        )
        yield CounterMetricFamily(
            "supernode_connections_timed_out",
            "Connections closed by the idle, header or body timeout",
            value=conns.timed_out,
        )
        commits = CounterMetricFamily(
            "supernode_group_commits", "Group-commit transactions", labels=["writer"]
        )
        committed = CounterMetricFamily(
            "supernode_group_commit_items", "Items written by group commits", labels=["writer"]
        )
        for writer in (node.intake.writer, node.voter.votes):
            commits.add_metric([writer.name], writer.commits)
            committed.add_metric([writer.name], writer.items)
        yield from (commits, committed)
        vote_batches = CounterMetricFamily(
            "supernode_vote_batches", "Vote-request batches sent", labels=["peer"]
        )
        vote_items = CounterMetricFamily(
            "supernode_vote_requests", "Vote requests sent (in batches)", labels=["peer"]
        )
        for addr, (batches, items) in node.executor.requests.sent().items():
            vote_batches.add_metric([addr], batches)
            vote_items.add_metric([addr], items)
        yield from (vote_batches, vote_items)
        yield GaugeMetricFamily(
            "supernode_eligible_members",
            "Members holding the minimum collateral",
            value=len(node.membership.eligible_members()),
        )
        banned = [a for a in node.membership.eligible if node.scoring.banned_until(a)]
        yield GaugeMetricFamily("supernode_banned_peers", "Peers banned now", value=len(banned))
        audits = CounterMetricFamily(
            "supernode_audits",
            "Audits this member drew (assigned), finished (done) and their verdicts; results it"
            " served to auditors (served)",
            labels=["what"],
        )
        for what, n in sorted(node.auditor.counts.items()):
            audits.add_metric([what], n)
        yield audits
        missed = node.book.missed_audits(node.address)
        yield CounterMetricFamily(
            "supernode_audits_missed",
            "Audits this member was assigned and did not do, in the last closed epoch's tally",
            value=missed,
        )
        score = GaugeMetricFamily(
            "supernode_reputation_score",
            "Score in the last closed epoch's table",
            labels=["member"],
        )
        latest = node.book.latest()
        for row in (latest or {}).get("rows", []):
            score.add_metric([row["address"]], row["score"])
        yield score
        yield GaugeMetricFamily(
            "supernode_uptime_seconds", "Seconds since start", value=time.time() - node.started_at
        )


def build_registry(node: Supernode) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(NodeCollector(node))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    return reg
