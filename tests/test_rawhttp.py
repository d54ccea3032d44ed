"""rawhttp against real servers on loopback: stdlib http.server and hand-written raw answers."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimon import httpresponse, rawhttp
from tests.httpserver import LoopbackServer, QuietHandler, serving


class Handler(QuietHandler):
    """Answer a few test routes; record each request's method, path and client port."""

    server: Server

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, self.client_address[1]))
        if self.path.startswith("/echo"):
            echo = {
                "method": self.command,
                "path": self.path,
                "body": json.loads(sent) if sent else None,
                "content_type": self.headers.get("Content-Type"),
                "host": self.headers.get("Host"),
            }
            self._send(200, json.dumps(echo).encode(), Content_Type="application/json")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Done")
            self.end_headers()
            for part in (b'{"parts": ', b"[1, 2, ", b"3]}"):
                self.wfile.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Done: yes\r\n\r\n")
        elif self.path.startswith("/size/"):
            self._send(200, b"x" * int(self.path.removeprefix("/size/")))
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/missing":
            self._send(404, b'{"error": "no such thing"}', Content_Type="application/json")
        elif self.path == "/then-close":
            # Keep-alive promised (no "Connection: close"), then the socket is closed anyway,
            # as a server does with an idle kept-alive connection.
            self._send(200, b"bye")
            self.close_connection = True
        elif self.path == "/stall":
            self.server.release.wait(10)
            self._send(200, b"late")
        else:
            self._send(400, b"unknown route")

    do_GET = do_PUT = do_DELETE = do_POST = _route


class Server(LoopbackServer):
    """A threaded test server that remembers what it saw."""

    def __init__(self) -> None:
        super().__init__(Handler)
        self.seen: list[tuple[str, str, int]] = []
        self.release = threading.Event()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    with serving(srv):
        yield srv
        srv.release.set()  # before shutdown: a handler still waits on it


def raw_server(answer: bytes) -> tuple[str, threading.Thread]:
    """Serve ``answer`` verbatim to one client after reading its request, then close."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


def test_get_put_delete_with_json_bodies(server: Server) -> None:
    got = rawhttp.request("GET", server.url + "/echo?x=1")
    assert got.status == 200 and got.reason == "OK"
    assert got.headers["content-type"] == "application/json"
    assert json.loads(got.body) == {
        "method": "GET",
        "path": "/echo?x=1",
        "body": None,
        "content_type": None,
        "host": f"127.0.0.1:{server.server_address[1]}",
    }
    body = json.dumps({"address": "10.0.0.7:7071"}).encode()
    put = rawhttp.request(
        "PUT", server.url + "/echo/pi-7", {"Content-Type": "application/json"}, body
    )
    assert json.loads(put.body)["body"] == {"address": "10.0.0.7:7071"}
    assert json.loads(put.body)["content_type"] == "application/json"
    gone = rawhttp.request("DELETE", server.url + "/echo/pi-7")
    assert json.loads(gone.body)["method"] == "DELETE"


def test_error_statuses_are_answers_not_exceptions(server: Server) -> None:
    missing = rawhttp.request("GET", server.url + "/missing")
    assert missing.status == 404 and json.loads(missing.body) == {"error": "no such thing"}


def test_chunked_answer_is_reassembled_and_connection_reused(server: Server) -> None:
    with rawhttp.Connection(server.url) as conn:
        first = conn.request("GET", "/chunked")
        second = conn.request("GET", "/echo")
    assert json.loads(first.body) == {"parts": [1, 2, 3]}
    assert json.loads(second.body)["method"] == "GET"
    assert server.seen[0][2] == server.seen[1][2]  # same client port: one connection


def test_keep_alive_reuses_one_connection_across_methods(server: Server) -> None:
    with rawhttp.Connection(server.url + "/echo") as conn:
        answers = [
            conn.request("PUT", "/a", body=b'{"n": 1}'),
            conn.request("GET", "/b"),
            conn.request("DELETE", "/c"),
        ]
    assert [json.loads(a.body)["path"] for a in answers] == ["/echo/a", "/echo/b", "/echo/c"]
    assert len({port for _, _, port in server.seen}) == 1


def test_no_body_answer_keeps_connection_usable(server: Server) -> None:
    with rawhttp.Connection(server.url) as conn:
        empty = conn.request("DELETE", "/empty")
        after = conn.request("GET", "/echo")
    assert empty.status == 204 and empty.body == b""
    assert after.status == 200 and len({port for _, _, port in server.seen}) == 1


def test_connection_closed_by_server_is_retried_once_on_a_fresh_one(server: Server) -> None:
    with rawhttp.Connection(server.url) as conn:
        assert conn.request("GET", "/then-close").body == b"bye"
        assert conn.request("GET", "/echo").status == 200
    assert [path for _, path, _ in server.seen] == ["/then-close", "/echo"]
    assert server.seen[0][2] != server.seen[1][2]


def test_connection_close_answer_drops_the_socket() -> None:
    url, thread = raw_server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    with rawhttp.Connection(url) as conn:
        answer = conn.request("GET", "/")
        assert conn.sock is None
    thread.join(5)
    assert answer.body == b"until the end"


def test_oversized_answers_are_refused_whatever_their_framing(server: Server) -> None:
    assert len(rawhttp.request("GET", server.url + "/size/1000", max_body=1000).body) == 1000
    with pytest.raises(httpresponse.ResponseTooLarge, match="larger than 1000 bytes"):
        rawhttp.request("GET", server.url + "/size/1001", max_body=1000)
    with pytest.raises(httpresponse.ResponseTooLarge):
        rawhttp.request("GET", server.url + "/chunked", max_body=10)
    url, thread = raw_server(b"HTTP/1.0 200 OK\r\n\r\n" + b"y" * 5000)
    with pytest.raises(httpresponse.ResponseTooLarge):
        rawhttp.request("GET", url, max_body=4096)
    thread.join(5)


def test_refused_port_is_a_connect_error() -> None:
    with socket.socket() as held:  # bound, not listening: connecting is refused
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(rawhttp.ConnectError, match="connection refused") as caught:
            rawhttp.request("GET", url + "/v1/nodes")
    assert isinstance(caught.value.cause, ConnectionRefusedError)


def test_unresolvable_host_is_a_connect_error() -> None:
    with pytest.raises(rawhttp.ConnectError, match="cannot resolve host") as caught:
        rawhttp.request("GET", "http://no-such-host.invalid/v1/nodes")
    assert isinstance(caught.value.cause, socket.gaierror)


def test_silent_server_times_out_within_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts by backlog, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(rawhttp.HttpTimeout, match=r"no progress for 0\.2 s"):
            rawhttp.request("GET", url, timeout=0.2)
        assert time.monotonic() - started < 2.0


def test_slow_handler_times_out_on_a_kept_alive_connection(server: Server) -> None:
    with rawhttp.Connection(server.url, timeout=0.2) as conn:
        assert conn.request("GET", "/echo").status == 200
        with pytest.raises(rawhttp.HttpTimeout):
            conn.request("GET", "/stall")
        assert conn.sock is None  # a timed-out connection is never reused


def test_truncated_and_garbled_answers_are_protocol_errors() -> None:
    url, thread = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    with pytest.raises(httpresponse.ProtocolError, match="mid-body"):
        rawhttp.request("GET", url)
    thread.join(5)
    url, thread = raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with pytest.raises(httpresponse.ProtocolError, match=r"not an HTTP/1\.x answer"):
        rawhttp.request("GET", url)
    thread.join(5)
    url, thread = raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello")
    with pytest.raises(httpresponse.ProtocolError, match="bad chunk size"):
        rawhttp.request("GET", url)
    thread.join(5)


def test_server_closing_a_fresh_connection_is_not_retried() -> None:
    url, thread = raw_server(b"")
    with pytest.raises(httpresponse.ConnectionDropped):
        rawhttp.request("GET", url)
    thread.join(5)


def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    url, thread = raw_server(answer)
    got = rawhttp.request("POST", url, body=b"{}")
    thread.join(5)
    assert (got.status, got.reason, got.body) == (201, "Created", b"ok")


def test_target_is_percent_encoded_and_headers_cannot_inject(server: Server) -> None:
    got = rawhttp.request("GET", server.url + "/echo/nœud 1")
    assert json.loads(got.body)["path"] == "/echo/n%C5%93ud%201"
    with pytest.raises(ValueError, match="bad header"):
        rawhttp.request("GET", server.url + "/echo", {"X-A": "1\r\nX-B: 2"})


def test_non_http_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="not an http"):
        rawhttp.Connection("ftp://127.0.0.1/")


def test_https_to_a_plain_http_server_fails_cleanly(server: Server) -> None:
    url = server.url.replace("http://", "https://")
    with pytest.raises(rawhttp.ConnectError) as caught:
        rawhttp.request("GET", url + "/echo", timeout=2.0)
    assert isinstance(caught.value.cause, ssl.SSLError)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    command = ["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_https_goes_through_http_client_and_keeps_alive(
    server: Server, tls_files: tuple[str, str]
) -> None:
    cert, key = tls_files
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(cert, key)
    server.socket = serving.wrap_socket(server.socket, server_side=True)
    trusting = ssl.create_default_context(cafile=cert)
    url = server.url.replace("http://", "https://")
    with rawhttp.Connection(url, context=trusting) as conn:
        first = conn.request("PUT", "/echo/x", body=b'{"a": 1}')
        second = conn.request("GET", "/chunked")
    assert json.loads(first.body)["body"] == {"a": 1}
    assert json.loads(second.body) == {"parts": [1, 2, 3]}
    assert server.seen[0][2] == server.seen[1][2]
    with pytest.raises(rawhttp.ConnectError) as caught:  # the default context does not trust it
        rawhttp.request("GET", url + "/echo")
    assert isinstance(caught.value.cause, ssl.SSLCertVerificationError)


def test_plain_http_needs_neither_http_client_ssl_email_nor_idna(server: Server) -> None:
    code = (
        "import sys, pimon.client\n"
        f"pimon.client.request({server.url!r}, '/echo')\n"
        "heavy = ('http.client', 'ssl', 'email', 'encodings.idna', 'urllib.request')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"
    assert server.seen[0][:2] == ("GET", "/echo")


def test_non_ascii_host_is_encoded_then_looked_up() -> None:
    with pytest.raises(
        rawhttp.ConnectError, match=r"cannot resolve host 'nœud\.invalid'"
    ) as caught:
        rawhttp.request("GET", "http://nœud.invalid/v1/nodes")
    assert isinstance(caught.value.cause, socket.gaierror)  # not a UnicodeError
