"""Pushed heartbeats: identity by id, renames, hijacks, takeovers, floods, replays."""

from __future__ import annotations

from pimon.claims import TAKEOVER_AFTER_S, claim
from pimon.detector import DetectorConfig
from pimon.membership import Membership, State
from pimon.wire import Heartbeat


def hb(
    name: str = "pi-1", id_: str = "id-a", seq: int = 1, boot: str = "b1", **kw: object
) -> Heartbeat:
    return Heartbeat(v=1, name=name, id=id_, seq=seq, boot=boot, sent_at=0.0, **kw)  # type: ignore[arg-type]


def test_first_push_registers_a_push_node() -> None:
    m = Membership(DetectorConfig())
    result = claim(m, hb(address="10.0.0.1:7071"), 100.0, max_nodes=10)
    assert result.status == 202 and result.created
    node = m.nodes["pi-1"]
    assert (node.mode, node.source, node.address, node.state) == (
        "push",
        "push",
        "10.0.0.1:7071",
        State.UP,
    )
    assert m.by_id["id-a"] == "pi-1"


def test_same_id_under_new_name_is_a_rename() -> None:
    m = Membership(DetectorConfig())
    claim(m, hb(), 100.0, max_nodes=10)
    result = claim(m, hb(name="pi-renamed", seq=2), 101.0, max_nodes=10)
    assert result.status == 202 and result.renamed_from == "pi-1"
    assert list(m.nodes) == ["pi-renamed"] and m.nodes["pi-renamed"].state is State.UP


def test_other_id_cannot_hijack_a_live_name() -> None:
    m = Membership(DetectorConfig())
    claim(m, hb(), 100.0, max_nodes=10)
    result = claim(m, hb(id_="id-evil"), 101.0, max_nodes=10)
    assert result.status == 409 and "held by another live node" in result.message
    assert m.nodes["pi-1"].id == "id-a"


def test_name_of_a_long_dead_node_can_be_taken_over() -> None:
    m = Membership(DetectorConfig())
    claim(m, hb(), 100.0, max_nodes=10)
    claim(m, hb(seq=2, leaving=True), 101.0, max_nodes=10)
    assert claim(m, hb(id_="id-new"), 101.0 + TAKEOVER_AFTER_S - 1, max_nodes=10).status == 409
    result = claim(m, hb(id_="id-new"), 101.0 + TAKEOVER_AFTER_S + 1, max_nodes=10)
    assert result.status == 202 and result.replaced == "id-a"
    assert m.nodes["pi-1"].id == "id-new" and "id-a" not in m.by_id


def test_node_limit_refuses_newcomers_but_not_known_nodes() -> None:
    m = Membership(DetectorConfig())
    claim(m, hb(), 100.0, max_nodes=1)
    assert claim(m, hb(name="pi-2", id_="id-b"), 100.0, max_nodes=1).status == 403
    assert claim(m, hb(seq=2), 101.0, max_nodes=1).status == 202


def test_replayed_and_reordered_heartbeats_are_ignored_but_a_new_boot_is_not() -> None:
    m = Membership(DetectorConfig())
    claim(m, hb(seq=5), 100.0, max_nodes=10)
    claim(m, hb(seq=6, leaving=True), 101.0, max_nodes=10)
    replay = claim(m, hb(seq=5), 102.0, max_nodes=10)
    assert replay.status == 202 and "stale seq" in replay.message
    assert m.nodes["pi-1"].state is State.LEFT
    reboot = claim(m, hb(seq=1, boot="b2"), 103.0, max_nodes=10)
    assert reboot.message == "" and m.nodes["pi-1"].state is State.UP


def test_future_sent_at_is_reported_not_used_for_detection() -> None:
    m = Membership(DetectorConfig())
    future = Heartbeat(v=1, name="pi-1", id="x", seq=1, boot="b", sent_at=100.0 + 86400)
    claim(m, future, 100.0, max_nodes=10)
    node = m.nodes["pi-1"]
    assert node.clock_offset_s == 86400.0
    assert node.detector.last_arrival == 100.0
