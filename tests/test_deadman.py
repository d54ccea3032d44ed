"""The dead-man's switch: pure health and schedule, and real requests to a receiver."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from pimon.deadman import DeadMan, due, health
from tests.receivers import Receiver

INTERVAL = 0.2


def test_healthy_only_with_a_reachable_node_and_a_prompt_loop() -> None:
    assert health(alive=3, lag=0.01) is None
    assert health(alive=0, lag=0.01) == "no node reachable"
    assert health(alive=3, lag=2.5) == "event loop lag 2.5s"


def test_due_every_interval() -> None:
    assert due(100.0, None, 60.0)
    assert not due(159.9, 100.0, 60.0)
    assert due(160.0, 100.0, 60.0)


class Cluster:
    """How many nodes the fake monitor reaches."""

    alive = 1


async def run_switch(switch: DeadMan) -> asyncio.Task[None]:
    return asyncio.create_task(switch.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_pings_on_schedule_stop_without_nodes_and_resume(receiver: Receiver) -> None:
    cluster = Cluster()
    url = receiver.url + "/api/push/Kx9?status=up&msg=OK&ping="
    async with aiohttp.ClientSession() as session:
        switch = DeadMan(
            url, INTERVAL, alive=lambda: cluster.alive, lag=lambda: 0.0, session=session
        )
        task = await run_switch(switch)
        try:
            pings = await receiver.wait(4)
            assert pings[0].method == "GET" and pings[0].path == "/api/push/Kx9"
            assert pings[0].query == {"status": "up", "msg": "OK", "ping": ""}
            gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
            # On schedule: never early, and late by at most a check step plus scheduling slack.
            assert all(INTERVAL * 0.9 <= g <= INTERVAL * 3 for g in gaps), gaps

            cluster.alive = 0
            await asyncio.sleep(INTERVAL)  # a ping already in flight may still land
            held = len(receiver.requests)
            await asyncio.sleep(INTERVAL * 5)
            assert len(receiver.requests) == held
            assert switch.stats.holding == "no node reachable"

            cluster.alive = 2
            await receiver.wait(held + 2)
            assert switch.stats.holding is None
            # The last answer may still be on its way back: count what surely completed.
            assert switch.stats.sent >= held + 1 and switch.stats.failed == 0
        finally:
            await stop(task)


async def test_a_stalled_monitor_loop_holds_the_pings(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        switch = DeadMan(receiver.url, INTERVAL, alive=lambda: 1, lag=lambda: 5.0, session=session)
        task = await run_switch(switch)
        try:
            await asyncio.sleep(INTERVAL * 4)
            assert receiver.requests == []
            assert switch.stats.holding == "event loop lag 5.0s"
        finally:
            await stop(task)


async def test_failed_pings_are_counted_with_the_error(receiver: Receiver) -> None:
    receiver.status = 503
    async with aiohttp.ClientSession() as session:
        switch = DeadMan(receiver.url, INTERVAL, alive=lambda: 1, lag=lambda: 0.0, session=session)
        await switch.ping()
        await switch.ping()
    assert (switch.stats.sent, switch.stats.failed) == (0, 2)
    assert switch.stats.last_error == "HTTP 503"
