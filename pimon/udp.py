"""Receive heartbeats as HMAC-signed UDP datagrams: the cheap path for big clusters.

Even on its lean path (``pimon.ingest``) an HTTP push costs the monitor a
connection, HTTP framing and an answer; a datagram skips all three. It is
optional (``--udp``) and needs the cluster token, which keys the HMAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from pimon.monitor import Monitor
from pimon.poller import decode
from pimon.wire import MAX_BODY_BYTES, open_datagram

log = logging.getLogger("pimon.udp")

# A datagram from a new agent boot must carry a send time this close to the
# monitor's clock (corrected by the node's known offset): an old datagram
# replayed after the agent restarted is refused, not taken for a live node.
REPLAY_WINDOW_S = 30.0
RECEIVE_BUFFER = 8 * 1024 * 1024


class HeartbeatDatagrams(asyncio.DatagramProtocol):
    """Verify, decode and hand pushed datagrams to the monitor."""

    def __init__(self, monitor: Monitor, token: str) -> None:
        self.monitor = monitor
        self.token = token
        self.rejected = 0
        self._warned = False

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Take one datagram; anything unauthentic or malformed is counted and dropped."""
        now = time.time()
        body = open_datagram(self.token, data) if len(data) <= MAX_BODY_BYTES else None
        if body is None:
            return self._reject(addr, "bad signature or framing")
        try:
            hb = decode(body)
        except ValueError as e:
            return self._reject(addr, f"bad heartbeat: {e}")
        node = self.monitor.membership.nodes.get(hb.name)
        if node is not None and node.boot and hb.boot != node.boot:
            offset = node.clock_offset_s or 0.0
            if abs(hb.sent_at - (now + offset)) > REPLAY_WINDOW_S:
                return self._reject(addr, "stale datagram from an earlier agent boot")
        result = self.monitor.receive(hb, now)
        if result.status >= 400:
            log.debug("%s: datagram refused: %s", hb.name, result.message)

    def _reject(self, addr: tuple[str | int, ...], why: str) -> None:
        self.rejected += 1
        self.monitor.stats.heartbeats_rejected += 1
        if not self._warned:  # one line, not one per datagram of a misconfigured agent
            log.warning(
                "rejected a heartbeat datagram from %s: %s (further ones at debug)", addr[0], why
            )
            self._warned = True
        else:
            log.debug("rejected a heartbeat datagram from %s: %s", addr[0], why)


async def listen(monitor: Monitor, token: str, host: str, port: int) -> asyncio.DatagramTransport:
    """Listen for heartbeat datagrams on ``host:port`` (UDP)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    # Datagrams that arrive while the loop is busy wait in this buffer; the
    # default (~200 KB) holds a third of a second of 10,000 nodes, then drops.
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
                break
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < RECEIVE_BUFFER:
        log.info(
            "udp receive buffer is %d KiB; raise net.core.rmem_max for large clusters",
            granted // 1024,
        )
    sock.bind((host, port))
    transport, _ = await loop.create_datagram_endpoint(
        lambda: HeartbeatDatagrams(monitor, token), sock=sock
    )
    return transport
