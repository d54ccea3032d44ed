"""Shape nodes and transitions into the JSON views the API serves."""

from __future__ import annotations

from typing import Any

import msgspec

from pimon.membership import Node, Transition


def node_view(node: Node, now: float) -> dict[str, Any]:
    """Return the API view of one node: last heartbeat fields plus monitor judgement."""
    hb = node.last
    detector = node.detector
    phi = detector.phi_suspect(now) if detector.last_arrival is not None else 0.0
    return {
        "name": node.name,
        "state": str(node.state),
        "since": node.since,
        "reason": node.reason,
        "last_seen": node.last_seen,
        "phi": round(phi, 3),
        "rtt_ms": node.rtt_ms,
        "clock_offset_s": node.clock_offset_s,
        "mode": node.mode,
        "source": node.source,
        "address": (hb.address if hb and hb.address and node.mode == "push" else node.address),
        "last_error": node.last_error,
        "v": hb.v if hb else None,
        "id": hb.id if hb else None,
        "seq": hb.seq if hb else None,
        "sent_at": hb.sent_at if hb else None,
        "interval": hb.interval if hb else None,
        "ok": hb.ok if hb else None,
        "problems": list(hb.problems) if hb else [],
        "leaving": hb.leaving if hb else False,
        # msgspec converts the dataclass ~20x faster than dataclasses.asdict.
        "metrics": msgspec.to_builtins(hb.metrics) if hb else None,
    }


def transition_view(t: Transition) -> dict[str, Any]:
    """Return the API view of one transition."""
    return {"node": t.node, "old": str(t.old), "new": str(t.new), "at": t.at, "reason": t.reason}
