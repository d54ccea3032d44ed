"""Fan monitor events out to subscribers without ever blocking detection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from pimon.membership import Transition


@dataclass(eq=False, slots=True)
class NodeWatch:
    """Names of nodes with a fresh view (or removed) since the watcher last looked."""

    fresh: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> tuple[set[str], set[str]]:
        """Return and clear what changed."""
        fresh, removed = self.fresh, self.removed
        self.fresh, self.removed = set(), set()
        self.wake.clear()
        return fresh, removed


class Events:
    """Transitions go to bounded queues; fresh views are coalesced per watcher."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Transition]] = set()
        self.watches: set[NodeWatch] = set()
        self.dropped = 0
        self.closed = False

    def close(self) -> None:
        """Wake every watcher for the last time: the monitor is shutting down."""
        self.closed = True
        for w in self.watches:
            w.wake.set()

    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue[Transition]:
        """Return a new queue that receives every future transition."""
        queue: asyncio.Queue[Transition] = asyncio.Queue(maxsize)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Transition]) -> None:
        """Stop delivering to ``queue``."""
        self.queues.discard(queue)

    def watch(self) -> NodeWatch:
        """Return a watcher told which nodes have fresh views."""
        w = NodeWatch()
        self.watches.add(w)
        return w

    def unwatch(self, w: NodeWatch) -> None:
        """Stop telling ``w``."""
        self.watches.discard(w)

    def publish(self, transitions: Iterable[Transition]) -> None:
        """Deliver transitions to every subscriber without waiting."""
        for t in transitions:
            for queue in self.queues:
                try:
                    queue.put_nowait(t)
                except asyncio.QueueFull:
                    self.dropped += 1
            self.touched(t.node)

    def touched(self, name: str) -> None:
        """Note that a node has a fresh view."""
        for w in self.watches:
            w.fresh.add(name)
            w.wake.set()

    def removed(self, name: str) -> None:
        """Note that a node was deregistered."""
        for w in self.watches:
            w.fresh.discard(name)
            w.removed.add(name)
            w.wake.set()

    @property
    def subscribers(self) -> int:
        """Return how many subscribers and watchers are attached."""
        return len(self.queues) + len(self.watches)
