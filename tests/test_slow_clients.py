"""Slow and idle clients against `mcp-ops serve` (a real subprocess), over raw loopback sockets.

Bounded: at most 200 client sockets, every one closed by the test, every wait capped; the
clients connect from other loopback addresses (127.0.0.2 and up) than the checks (127.0.0.1).
"""

from __future__ import annotations

import time

import pytest

from bot.console.slow import connect, read_all, slow_clients, stalled_body, stalled_headers
from tests.conftest import CHANNEL, OPERATOR, SIGNING_SECRET, eventually, message_text

SLOW_CLIENTS = 200


def signed_help_answers(server, fake_slack) -> str:
    sender = server.sender(SIGNING_SECRET, fake_slack.base_url, fake_slack.check_ack)
    url = sender.new_response_url()
    reply = sender.slash("help", user=OPERATOR, channel=CHANNEL, response_url=url)
    assert reply.status == 200
    if reply.body.strip().startswith("{"):
        return message_text(reply.json())
    path = url.split(fake_slack.base_url, 1)[1]
    return message_text(fake_slack.wait_for_call("response_url", lambda c: c.path == path, 20)[0].payload)


def test_200_slow_clients_leave_healthz_and_signed_commands_answering(serve, fake_slack):
    # Deadlines far beyond the test: the clients hold on for as long as the checks take.
    server = serve(HTTP_HEADER_TIMEOUT_SECONDS="120", HTTP_BODY_TIMEOUT_SECONDS="120")
    with slow_clients(server.port, SLOW_CLIENTS, SIGNING_SECRET):
        assert server.get("/healthz", timeout=10) == (200, "ok")
        assert "/mcp find" in signed_help_answers(server, fake_slack)
        assert server.get("/readyz", timeout=10)[0] == 200
        assert server.get("/healthz", timeout=10) == (200, "ok")


def test_read_deadlines_answer_408_and_close_the_connection(serve):
    server = serve(HTTP_HEADER_TIMEOUT_SECONDS="1", HTTP_BODY_TIMEOUT_SECONDS="1")
    idle = connect(server.port, "127.0.0.2")  # says nothing at all
    headers = connect(server.port, "127.0.0.2")
    body = connect(server.port, "127.0.0.2")
    try:
        headers.sendall(stalled_headers())
        body.sendall(stalled_body(SIGNING_SECRET))
        for sock in (idle, headers, body):
            answer = read_all(sock)  # returns once the server has closed the connection
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        # A kept-alive connection that starts a second request and stalls is cut too.
        kept = connect(server.port, "127.0.0.2")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        answer = read_all(kept)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer
        kept.close()
    finally:
        for sock in (idle, headers, body):
            sock.close()
    assert server.get("/healthz") == (200, "ok")


def test_connections_per_client_address_are_capped(serve):
    server = serve(HTTP_MAX_CONNECTIONS_PER_CLIENT="10", HTTP_HEADER_TIMEOUT_SECONDS="120")
    held = [connect(server.port, "127.0.0.3") for _ in range(10)]
    try:
        for sock in held:
            sock.sendall(stalled_headers())
        over = connect(server.port, "127.0.0.3")
        answer = read_all(over)
        over.close()
        assert answer.startswith(b"HTTP/1.1 429 ")
        # Other addresses are not affected.
        assert server.get("/healthz") == (200, "ok")
        # A place freed is a place for the next connection from that address.
        held.pop().close()

        def admitted() -> bool:
            sock = connect(server.port, "127.0.0.3")
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return read_all(sock).startswith(b"HTTP/1.1 200 ")
            finally:
                sock.close()

        assert eventually(admitted, timeout=20, interval=0.2)
    finally:
        for sock in held:
            sock.close()


def test_headers_past_32_kib_are_refused_with_431(serve):
    server = serve()
    sock = connect(server.port, "127.0.0.2")
    try:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n")
        for index in range(40):  # 40 KiB of headers, never ending
            sock.sendall(f"X-Pad-{index}: {'a' * 1000}\r\n".encode())
        answer = read_all(sock)
    except (BrokenPipeError, ConnectionResetError):
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert server.get("/healthz") == (200, "ok")


@pytest.mark.parametrize("declared", ["20000000", "abc"])
def test_an_oversized_or_bogus_length_is_refused_before_the_body_is_read(serve, declared):
    server = serve()
    sock = connect(server.port, "127.0.0.2")
    try:
        timestamp = int(time.time())
        sock.sendall(
            (
                f"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
                f"X-Slack-Request-Timestamp: {timestamp}\r\nX-Slack-Signature: v0=00\r\n\r\n"
            ).encode()
        )
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith((b"HTTP/1.1 413 ", b"HTTP/1.1 400 "))
