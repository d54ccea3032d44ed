"""The heartbeat HTTP client against raw TCP servers: keep-alive, framing, limits, failures."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pimon.httpclient import ConnectionClosed, Endpoint, HostNotFound, HttpClient
from pimon.httpwire import BodyTooLarge, HttpError, Response
from tests.rawserver import RawServer, hang_first_connection

LIMIT = 1024


def answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def keep_answering(conn: socket.socket, server: RawServer) -> None:
    n = 0
    while server.read_request(conn) is not None:
        n += 1
        conn.sendall(answer(b'{"n":%d}' % n))


@pytest.fixture
async def client() -> Any:
    http = HttpClient(LIMIT, user_agent="test")
    yield http
    http.close()
    await asyncio.sleep(0)


async def fetch(endpoint: Endpoint, budget_s: float = 5.0) -> Response | Exception:
    """GET once on an endpoint the way the poller does: abort it after ``budget_s``."""
    future: asyncio.Future[Response | Exception] = asyncio.get_running_loop().create_future()

    def done(result: Response | Exception) -> None:
        if not future.done():
            future.set_result(result)

    endpoint.get(done)
    try:
        return await asyncio.wait_for(asyncio.shield(future), budget_s)
    except TimeoutError:
        endpoint.abort(TimeoutError())
        return await future


async def test_keep_alive_sends_every_get_over_one_connection(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    server = raw_servers(keep_answering)
    endpoint = client.endpoint(server.address, "/v1/heartbeat")
    bodies = [await fetch(endpoint) for _ in range(20)]
    assert bodies == [Response(200, b'{"n":%d}' % n) for n in range(1, 21)]
    assert server.accepts == 1
    head = server.requests[0].decode()
    assert head.startswith("GET /v1/heartbeat HTTP/1.1\r\n")
    assert f"\r\nHost: {server.address}\r\n" in head
    assert "\r\nConnection: keep-alive\r\n" in head


async def test_connection_close_answers_and_idle_closes_reconnect(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def close_after_one(conn: socket.socket, server: RawServer) -> None:
        if server.read_request(conn) is not None:
            extra = "Connection: close\r\n" if server.accepts % 2 else ""
            conn.sendall(answer(b"{}", extra=extra))  # then close, said or not

    server = raw_servers(close_after_one)
    endpoint = client.endpoint(server.address, "/")
    assert [await fetch(endpoint) for _ in range(6)] == [Response(200, b"{}")] * 6
    assert server.accepts == 6


async def test_a_get_racing_an_idle_close_is_retried_once_on_a_fresh_connection(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def answer_once_then_drop_the_next(conn: socket.socket, server: RawServer) -> None:
        if server.read_request(conn) is not None:
            conn.sendall(answer(b"first"))
        server.read_request(conn)  # the reused connection gets a request, then a close

    server = raw_servers(answer_once_then_drop_the_next)
    endpoint = client.endpoint(server.address, "/")
    assert await fetch(endpoint) == Response(200, b"first")
    assert await fetch(endpoint) == Response(200, b"first")
    assert server.accepts == 2


async def test_a_fresh_connection_closed_without_answer_fails_without_retrying(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    server = raw_servers(lambda conn, srv: srv.read_request(conn) and None)
    result = await fetch(client.endpoint(server.address, "/"))
    assert isinstance(result, ConnectionClosed)
    assert server.accepts == 1


async def test_chunked_body_is_joined_and_the_connection_kept(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def chunked(conn: socket.socket, server: RawServer) -> None:
        while server.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel")
            conn.sendall(b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")

    server = raw_servers(chunked)
    endpoint = client.endpoint(server.address, "/")
    assert await fetch(endpoint) == Response(200, b"hello world")
    assert await fetch(endpoint) == Response(200, b"hello world")
    assert server.accepts == 1


async def test_body_until_close_is_read_for_http_1_0(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def http10(conn: socket.socket, server: RawServer) -> None:
        if server.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}")

    server = raw_servers(http10)
    endpoint = client.endpoint(server.address, "/")
    assert [await fetch(endpoint) for _ in range(2)] == [Response(200, b"{}")] * 2
    assert server.accepts == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (LIMIT + 1),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n"
        + b"x" * 512
        + b"\r\n201\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (LIMIT + 1),
    ],
    ids=["content-length", "one-chunk", "chunks", "until-close"],
)
async def test_body_over_the_limit_fails_and_closes(
    raw_servers: Callable[..., RawServer], client: HttpClient, head: bytes
) -> None:
    def oversized(conn: socket.socket, server: RawServer) -> None:
        if server.read_request(conn) is not None:
            conn.sendall(head)
            server.wait_client_close(conn)  # never sends the rest: the client must not wait

    server = raw_servers(oversized)
    result = await fetch(client.endpoint(server.address, "/"))
    assert isinstance(result, BodyTooLarge)
    assert str(result) == "body over 1 KiB"
    assert await asyncio.to_thread(server.client_closed.wait, 5)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "unexpected interim answer HTTP 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "both Content-Length and chunked",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", "not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 9000, "answer head over 8 KiB"),
    ],
)
async def test_malformed_answers_are_refused_with_a_reason(
    raw_servers: Callable[..., RawServer], client: HttpClient, raw: bytes, reason: str
) -> None:
    def malformed(conn: socket.socket, server: RawServer) -> None:
        if server.read_request(conn) is not None:
            conn.sendall(raw)
            server.wait_client_close(conn)

    server = raw_servers(malformed)
    result = await fetch(client.endpoint(server.address, "/"))
    assert isinstance(result, HttpError)
    assert reason in str(result)
    assert await asyncio.to_thread(server.client_closed.wait, 5)


async def test_bytes_past_the_answer_close_the_connection(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def chatty(conn: socket.socket, server: RawServer) -> None:
        while server.read_request(conn) is not None:
            conn.sendall(answer(b"ok") + b"HTTP/1.1 200 OK\r\n")

    server = raw_servers(chatty)
    endpoint = client.endpoint(server.address, "/")
    assert [await fetch(endpoint) for _ in range(2)] == [Response(200, b"ok")] * 2
    assert server.accepts == 2


async def test_a_timed_out_half_answer_is_never_reused(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def stall_first(conn: socket.socket, server: RawServer) -> None:
        if server.accepts == 1:
            server.read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            server.wait_client_close(conn)
        else:
            keep_answering(conn, server)

    server = raw_servers(stall_first)
    endpoint = client.endpoint(server.address, "/")
    assert isinstance(await fetch(endpoint, budget_s=0.2), TimeoutError)
    assert await asyncio.to_thread(server.client_closed.wait, 5)
    assert await fetch(endpoint) == Response(200, b'{"n":1}')
    assert server.accepts == 2


async def test_one_shot_get_times_out_and_closes(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    def silent(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        server.wait_client_close(conn)

    server = raw_servers(silent)
    with pytest.raises(TimeoutError):
        await client.get(server.address, "/", 0.2)
    assert await asyncio.to_thread(server.client_closed.wait, 5)
    assert not client.endpoints


async def test_refused_port_raises_connection_refused(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await client.get(f"127.0.0.1:{port}", "/", 5)


async def test_unresolvable_host_raises_host_not_found(client: HttpClient) -> None:
    with pytest.raises(HostNotFound):
        await client.get("no-such-host.invalid:7071", "/", 30)


async def test_bad_address_fails_the_get_instead_of_raising(client: HttpClient) -> None:
    result = await fetch(client.endpoint("bad host:7071", "/"))
    assert isinstance(result, ValueError)


async def test_host_name_falls_back_to_the_address_that_accepts(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    server = raw_servers(keep_answering)  # IPv4 only: localhost's ::1, if listed, refuses
    port = server.address.rsplit(":", 1)[1]
    assert await client.get(f"localhost:{port}", "/", 5) == Response(200, b'{"n":1}')
    assert f"\r\nHost: localhost:{port}\r\n" in server.requests[0].decode()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_literal_address(
    raw_servers: Callable[..., RawServer], client: HttpClient
) -> None:
    server = raw_servers(keep_answering, "::1")
    assert server.address.startswith("[::1]:")
    endpoint = client.endpoint(server.address, "/")
    assert [await fetch(endpoint) for _ in range(3)][-1] == Response(200, b'{"n":3}')
    assert server.accepts == 1
    assert f"\r\nHost: {server.address}\r\n" in server.requests[0].decode()


async def test_names_are_resolved_once_per_ttl(raw_servers: Callable[..., RawServer]) -> None:
    server = raw_servers(keep_answering)
    port = server.address.rsplit(":", 1)[1]
    calls: list[str] = []
    now = [1000.0]

    def resolver(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        return socket.getaddrinfo(host, *args, **kwargs)

    http = HttpClient(LIMIT, dns_ttl=30.0, resolver=resolver, clock=lambda: now[0])
    try:
        for advance in (0.0, 29.0, 2.0):
            now[0] += advance
            assert (await http.get(f"localhost:{port}", "/", 5)).status == 200
        assert calls == ["localhost", "localhost"]  # the third GET came after the TTL
    finally:
        http.close()


async def test_a_slow_lookup_blocks_neither_other_nodes_nor_repeats(
    raw_servers: Callable[..., RawServer],
) -> None:
    server = raw_servers(keep_answering)
    release = threading.Event()
    calls: list[str] = []

    def resolver(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        if host == "slow.test":
            release.wait(10)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.getaddrinfo(host, *args, **kwargs)

    http = HttpClient(LIMIT, resolver=resolver)
    try:
        slow = http.endpoint("slow.test:7071", "/")
        assert isinstance(await fetch(slow, budget_s=0.1), TimeoutError)
        assert (await http.get(server.address, "/", 5)).status == 200
        assert isinstance(await fetch(slow, budget_s=0.1), TimeoutError)
        assert calls.count("slow.test") == 1  # one lookup in flight per name, not one per poll
        release.set()
        assert isinstance(await fetch(slow), HostNotFound)
    finally:
        release.set()
        http.close()


def test_keep_alive_and_timeouts_work_on_uvloop_too(raw_servers: Callable[..., RawServer]) -> None:
    uvloop = pytest.importorskip("uvloop")  # the monitor runs on it when it is installed

    server = raw_servers(hang_first_connection(keep_answering))

    async def scenario() -> list[Response | Exception]:
        http = HttpClient(LIMIT)
        try:
            endpoint = http.endpoint(server.address, "/")
            return [await fetch(endpoint, budget_s=0.2) for _ in range(4)]
        finally:
            http.close()
            await asyncio.sleep(0)

    first, *rest = uvloop.run(scenario())
    assert isinstance(first, TimeoutError)
    assert rest == [Response(200, b'{"n":%d}' % n) for n in (1, 2, 3)]
    assert server.accepts == 2
