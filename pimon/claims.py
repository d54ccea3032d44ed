"""Decide which node a pushed heartbeat belongs to: identity, renames, takeovers, limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from pimon.membership import Membership, State, Transition
from pimon.wire import Heartbeat

# A name held by a node that has been down or gone this long may be taken by
# another machine (a reinstalled Pi gets a new id but keeps its host name).
TAKEOVER_AFTER_S = 600.0
DEAD = frozenset({State.DOWN, State.LEFT})


@dataclass(slots=True)
class Claim:
    """The outcome of a pushed heartbeat: an HTTP status and what changed."""

    status: int
    message: str = ""
    transitions: list[Transition] = field(default_factory=list)
    renamed_from: str | None = None
    replaced: str | None = None  # id of a dead node whose name was taken over
    created: bool = False


def claim(
    members: Membership, hb: Heartbeat, now: float, *, max_nodes: int, rtt_ms: float | None = None
) -> Claim:
    """Apply a pushed heartbeat, refusing hijacks, floods and replays."""
    outcome = Claim(202)
    holder = members.nodes.get(hb.name)
    known_as = members.by_id.get(hb.id)
    if holder is not None and holder.id not in (None, hb.id):
        dead_for = now - holder.since
        if holder.state not in DEAD or dead_for < TAKEOVER_AFTER_S:
            return Claim(
                409,
                f"node name {hb.name!r} is held by another live node (id {holder.id}); "
                "give this agent another --name or stop the other one",
            )
        outcome.replaced = holder.id
        members.remove(hb.name)
        holder = None
    if known_as is not None and known_as != hb.name:
        if holder is not None:
            return Claim(409, f"node name {hb.name!r} is registered to another node")
        members.rename(known_as, hb.name)
        outcome.renamed_from = known_as
    elif holder is None:
        if len(members.nodes) >= max_nodes:
            return Claim(403, f"node limit reached ({max_nodes} nodes); raise --max-nodes")
        members.add(hb.name, mode="push", source="push", address=hb.address, now=now)
        outcome.created = True
    node = members.nodes[hb.name]
    if node.mode == "push":
        node.address = hb.address or node.address
    if members.is_stale(node, hb):
        outcome.message = "stale seq: replayed or reordered heartbeat ignored"
        return outcome
    reason = "push path restored" if node.push_broken else None
    node.push_broken = False
    outcome.transitions = members.on_heartbeat(hb.name, hb, now, rtt_ms=rtt_ms, reason=reason)
    return outcome
