"""The HTTP relay's state machine, sans-IO: a client connection on fake transports and a fake
clock (tests/unit/fakes.py). Each test drives the transitions of http_relay's docstring and checks
what the client and the servers were sent, the timers armed, and the access log."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import pytest

from edgeproxy.config import Timeouts
from edgeproxy.net.http_relay import LINGER_SECONDS, HttpConnection
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.tcp_relay import TcpConnection
from edgeproxy.proto.proxy_protocol import build_v2
from tests.unit.fakes import FakeTransport, access_log, event_log, sansio, settle
from tests.unit.relay_rig import OK, TIMEOUTS, Rig, get

XFF = b"X-Forwarded-For: 192.0.2.10\r\n"


def lines(out: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


# -- requests, responses, keep-alive -------------------------------------------------------------------
def test_request_on_an_idle_connection_and_back_to_idle() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    assert rig.state == "NEW"
    rig.send(get("/a"))
    assert rig.state == "WAIT"
    sent = up.take()
    assert sent.startswith(b"GET /a HTTP/1.1\r\nHost: a.test\r\n") and XFF in sent
    rig.answer(up)
    assert rig.state == "IDLE"
    assert rig.client.take() == OK
    assert len(rig.idle) == 1 and rig.servers[0].active == 0  # back in the pool, released


def test_response_in_pieces_streams_through() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up, b"HTTP/1.1 200 OK\r\nContent-")
    assert rig.state == "WAIT" and rig.client.take() == b""
    rig.answer(up, b"Length: 4\r\n\r\nab")
    assert rig.state == "RESPONSE" and rig.client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"
    rig.answer(up, b"cd")
    assert rig.state == "IDLE" and rig.client.take() == b"cd"


# A CGI server's head (bare LF line ends) whose body holds a CRLF CRLF: in one read the usual
# response path finds that CRLF CRLF first and is told by llhttp, not by a search beforehand,
# that the head ended earlier (issue 15: the search was 8% of a keep-alive request).
_CGI = b"HTTP/1.1 200 OK\nContent-Length: 6\n\nab\r\n\r\n"
_CGI_FORWARDED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab\r\n\r\n"


@pytest.mark.parametrize("cut", [0, 5, 20, 24, len(_CGI) - 1])
def test_bare_lf_response_head_is_made_crlf_however_it_is_cut(cut: int) -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    for piece in (_CGI[:cut], _CGI[cut:]) if cut else (_CGI,):
        rig.answer(up, piece)
    assert rig.state == "IDLE"
    assert rig.client.take() == _CGI_FORWARDED
    assert len(rig.idle) == 1  # the response ended exactly: the connection is reused


def test_a_crlf_response_with_a_bad_head_in_one_read_is_a_502() -> None:
    """The usual response path asks llhttp before the client side hears of the head: a head it
    refuses (no bare LF to blame) gets our 502, nothing of it forwarded."""
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up, b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok")
    out = rig.client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"Bad Name" not in out


def test_pipelined_requests_are_held_and_answered_in_order() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get("/1") + get("/2") + get("/3")[:10])
    assert up.take().startswith(b"GET /1 ")
    assert not rig.client.reading  # the rest is held; the client waits in the kernel
    rig.answer(up)
    assert up.take().startswith(b"GET /2 ")
    assert rig.client.take() == OK and not rig.client.reading
    rig.answer(up)
    assert rig.state == "HEAD" and rig.client.reading  # /3 is a partial head now
    rig.send(get("/3")[10:])
    assert up.take().startswith(b"GET /3 ")


def test_request_body_streams_then_wait() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    assert rig.state == "BODY" and up.take().endswith(b"\r\n\r\nhello")
    rig.send(b"world" + get("/next"))
    assert rig.state == "WAIT" and up.take() == b"world"  # the next request is not part of it
    rig.answer(up)
    assert up.take().startswith(b"GET /next ")


def test_early_answer_before_the_body_ends_closes_the_connection() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")
    rig.answer(up, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert rig.client.take().startswith(b"HTTP/1.1 413 ")
    assert rig.client.closed and up.closed  # where the next request would start is unknowable


# -- the deadlines of each state -------------------------------------------------------------------------
def test_one_timer_per_connection() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    for i in range(20):
        rig.send(get(f"/{i}"))
        rig.answer(up)
    assert rig.loop.armed() == sorted([rig.conn.timer_at, rig.loop.now + 1.0])  # and the idle pool's sweep


def test_new_connection_that_sends_nothing_closes_silently_at_http_request() -> None:
    rig = Rig()
    rig.loop.advance(TIMEOUTS.http_request - 0.5)
    assert not rig.client.closed
    rig.loop.advance(1)
    assert rig.client.closed and rig.client.take() == b""
    assert rig.ctx.stats.ended == {"request_timeout": 1}


def test_idle_keep_alive_connection_closes_at_client_idle() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up)
    rig.client.take()
    rig.loop.advance(TIMEOUTS.client_idle - 1)
    assert not rig.client.closed
    rig.loop.advance(2)
    assert rig.client.closed and rig.client.take() == b""
    assert rig.ctx.stats.ended == {"client_idle": 1}


def test_empty_lines_count_toward_the_head_deadline() -> None:
    """Issue 10 defect 3: a client sending CRLF once a second after a response held the
    connection forever (each empty line refreshed the idle timer) and was never logged."""
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up)
    rig.client.take()
    with access_log() as out:
        for _ in range(int(TIMEOUTS.http_request) + 2):
            if rig.client.closed:
                break
            rig.send(b"\r\n")
            rig.loop.advance(1)
        assert rig.client.closed
        assert rig.client.take().startswith(b"HTTP/1.1 408 ")
    (line,) = lines(out)
    assert (line["status"], line["end"]) == (408, "request_timeout")
    assert line["duration_ms"] == pytest.approx(TIMEOUTS.http_request * 1000, abs=1000)


def test_slow_head_gets_408_and_the_first_requests_duration_is_real() -> None:
    """Issue 10 defect 9: a 408 on a connection's first request was logged with the loop's clock
    (here 50 000 s) as its duration."""
    rig = Rig()
    with access_log() as out:
        rig.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        rig.loop.advance(TIMEOUTS.http_request + 0.1)
    assert rig.client.take().startswith(b"HTTP/1.1 408 ")
    (line,) = lines(out)
    assert (line["status"], line["method"], line["path"]) == (408, "GET", "/slow")
    assert line["duration_ms"] == pytest.approx(TIMEOUTS.http_request * 1000, abs=200)
    assert rig.ctx.stats.request_duration.sum < 2 * TIMEOUTS.http_request


def test_the_first_request_has_http_request_from_accept() -> None:
    rig = Rig()
    rig.loop.advance(TIMEOUTS.http_request - 1)
    rig.send(b"GET / HTTP/1.1\r\n")  # its first byte does not restart the clock
    rig.loop.advance(1.5)
    assert rig.client.take().startswith(b"HTTP/1.1 408 ")


def test_server_that_does_not_answer_gets_504_at_server_idle() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.loop.advance(TIMEOUTS.server_idle - 1)
    assert rig.state == "WAIT"
    rig.loop.advance(2)
    assert rig.client.take().startswith(b"HTTP/1.1 504 ")
    assert up.closed


def test_a_response_that_keeps_moving_is_not_cut() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(10):
        rig.loop.advance(TIMEOUTS.server_idle * 0.9)
        rig.answer(up, b"x")
    assert rig.state == "RESPONSE" and not rig.client.closed


def test_stalled_body_gets_408() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    rig.loop.advance(min(TIMEOUTS.client_idle, TIMEOUTS.server_idle) + 1)
    assert rig.client.take().startswith(b"HTTP/1.1 408 ") and up.closed


def test_error_answer_lingers_then_closes() -> None:
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert rig.client.take().startswith(b"HTTP/1.1 400 ")
    assert rig.state == "LINGER" and rig.client.eof_written and rig.client.reading and not rig.client.closed
    rig.send(b"more bytes the client was still sending")  # read and dropped
    rig.loop.advance(LINGER_SECONDS + 0.1)
    assert rig.client.closed and rig.state == "CLOSED"


# -- bare LF, sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\n\r\n"])
@pytest.mark.parametrize("cut", [0, 5, 17, 20])
def test_bare_lf_head_gets_400_at_once(head: bytes, cut: int) -> None:
    """Issue 10 defect 2: the end of a head was only looked for as CRLF CRLF, so a bare-LF head
    waited for the 408."""
    rig = Rig()
    rig.idle_upstream()
    if cut:
        rig.send(head[:cut])
    rig.send(head[cut:])
    assert rig.client.take().startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_head_over_16_kib_gets_431_however_it_arrives(piece: int) -> None:
    rig = Rig()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 17000 + b"\r\n\r\n"
    for i in range(0, len(head), piece):
        if rig.client.closed or rig.state == "LINGER":
            break
        rig.send(head[i : i + piece])
    assert rig.client.take().startswith(b"HTTP/1.1 431 ")


def _cpu_to_feed(size: int) -> float:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * (size - 40) + b"\r\n\r\n"
    best = float("inf")
    for _ in range(3):
        rig = Rig()
        rig.idle_upstream()
        send = rig.conn.data_received
        pieces = [head[i : i + 1] for i in range(len(head))]
        t0 = time.process_time()
        for piece in pieces:
            send(piece)
        best = min(best, time.process_time() - t0)
        assert rig.state == "WAIT"
    return best


def test_a_head_sent_one_byte_at_a_time_costs_linear_time() -> None:
    """Issue 10 defect 10: each read rebuilt buf + data and searched from 0 (a 16 KiB head one
    byte at a time cost ~95 ms of loop CPU). 8x the bytes must cost about 8x, not 64x."""
    small, large = _cpu_to_feed(2000), _cpu_to_feed(16000)
    assert large / small < 16, f"2 KB: {small * 1000:.1f} ms, 16 KB: {large * 1000:.1f} ms"


# -- half-close, backpressure ---------------------------------------------------------------------
def test_half_close_after_complete_requests_answers_them_then_closes() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get("/1") + get("/2"))
    assert rig.conn.eof_received() is True  # keep our side open: answers are coming
    rig.answer(up)
    rig.answer(up)
    assert rig.client.take() == OK + OK
    assert rig.client.closed


def test_half_close_in_the_middle_of_a_body_closes() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    assert rig.conn.eof_received() is False
    assert rig.client.closed and up.closed


def test_backpressure_crosses_the_pair() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
    cast(UpstreamConn, up.protocol).pause_writing()  # the server is not reading the body
    assert not rig.client.reading
    cast(UpstreamConn, up.protocol).resume_writing()
    assert rig.client.reading
    rig.conn.pause_writing()  # the client is not reading the response
    assert not up.reading
    rig.conn.resume_writing()
    assert up.reading


# -- upstream loss: what is sent again ----------------------------------------------------------------
@sansio
async def test_get_on_a_reused_connection_the_server_closed_is_sent_again_on_a_new_one() -> None:
    rig = Rig()
    stale = rig.idle_upstream()
    rig.send(get("/again"))
    stale.lose()  # its keep-alive timer fired as we sent
    assert rig.state == "CONNECTING"
    await settle()
    (fresh,) = rig.loop.connections
    assert fresh.peer == ("10.0.0.1", 8080) and fresh.take().startswith(b"GET /again ")
    rig.answer(fresh)
    assert rig.client.take() == OK


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_non_idempotent_request_is_never_sent_again(method: str) -> None:
    """Issue 10 defect 8: a request without body was re-sent whatever its method."""
    rig = Rig()
    stale = rig.idle_upstream()
    rig.send(f"{method} /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode())
    stale.lose()
    assert rig.client.take().startswith(b"HTTP/1.1 502 ")
    assert rig.loop.connections == [] and rig.loop.tasks == []


def test_a_request_the_server_began_to_answer_is_not_sent_again() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get())
    rig.answer(up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    up.lose()
    assert rig.client.closed and rig.loop.tasks == []


@sansio
async def test_get_whose_new_connection_closed_unanswered_goes_to_another_server() -> None:
    rig = Rig(servers=2, retries=2)
    rig.send(get("/x"))
    await settle()
    (first,) = rig.loop.connections
    first.take()
    first.lose()  # accepted, then closed without a byte
    await settle()
    first_server = first.peer
    second = rig.loop.connections[1]
    assert second.peer != first_server and second.take().startswith(b"GET /x ")
    rig.answer(second)
    assert rig.client.take() == OK


@sansio
async def test_sending_again_stops_after_retries() -> None:
    rig = Rig(servers=3, retries=1)
    rig.send(get())
    await settle()
    rig.loop.connections[0].lose()
    await settle()
    rig.loop.connections[1].lose()
    await settle()
    assert len(rig.loop.connections) == 2
    assert rig.client.take().startswith(b"HTTP/1.1 502 ")


@sansio
async def test_passive_health_is_read_on_one_clock() -> None:
    """Issue 10 defect 9: the relay asked the balancer with the loop's clock while failures are
    marked with time.monotonic(); with clocks this far apart a held-out server was picked."""
    rig = Rig(servers=2)
    rig.suspect(0)
    for _ in range(4):
        rig.send(get())
        await settle()
        up = rig.loop.connections[-1]
        assert up.peer == ("10.0.0.2", 8080)
        rig.answer(up)


# -- connect, tasks -------------------------------------------------------------------------------------
@sansio
async def test_close_while_connecting_cancels_the_connect() -> None:
    rig = Rig()
    rig.loop.hold = asyncio.Event()
    rig.send(get())
    await settle()
    (task,) = rig.loop.tasks
    rig.client.lose()
    await settle()
    assert task.cancelled()
    assert rig.loop.connections == [] and rig.servers[0].active == 0


@sansio
async def test_connect_refused_everywhere_is_502() -> None:
    rig = Rig(servers=2)
    rig.loop.refuse = {8080}
    rig.send(get())
    await settle()
    assert rig.client.take().startswith(b"HTTP/1.1 502 ")
    assert all(s.active == 0 for s in rig.servers)


@sansio
async def test_send_proxy_backends_get_the_header_and_a_private_pool() -> None:
    rig = Rig(send_proxy="v2")
    rig.send(get("/1"))
    await settle()
    (up,) = rig.loop.connections
    assert up.take().startswith(build_v2(("192.0.2.10", 40000), ("192.0.2.1", 80)) + b"GET /1 ")
    rig.answer(up)
    rig.send(get("/2"))
    assert up.take().startswith(b"GET /2 ")  # reused: this client's own connection
    assert len(rig.idle) == 0
    rig.answer(up)
    rig.client.lose()
    assert up.closed


# -- upgrades ---------------------------------------------------------------------------------------
def test_websocket_upgrade_switches_to_a_tunnel() -> None:
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert b"Upgrade: websocket\r\n" in up.take()
    rig.answer(up, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi")
    assert rig.state == "TUNNEL" and rig.client.take().endswith(b"\r\n\r\nhi")
    rig.send(b"\x81\x02yo")
    assert up.take() == b"\x81\x02yo"
    assert rig.conn.eof_received() is True and up.eof_written
    cast(UpstreamConn, up.protocol).eof_received()
    assert rig.client.closed


def test_h2c_upgrade_is_stripped_and_a_101_is_refused() -> None:
    """Issue 10 defect 4: a backend following RFC 7540 3.2 would switch to HTTP/2 and take every
    later request without our forwarding headers."""
    rig = Rig()
    up = rig.idle_upstream()
    rig.send(get("/", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"))
    sent = up.take()
    assert b"h2c" not in sent and b"HTTP2-Settings" not in sent and b"Upgrade" not in sent
    rig.answer(up, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert rig.client.take().startswith(b"HTTP/1.1 502 ")


def test_upgrades_off_for_the_listener() -> None:
    rig = Rig(upgrades=())
    up = rig.idle_upstream()
    rig.send(get("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert b"Upgrade" not in up.take()


# -- drain, PROXY header ---------------------------------------------------------------------------
def test_drain_closes_idle_now_and_busy_after_the_response() -> None:
    idle, busy = Rig(), Rig()
    up = busy.idle_upstream()
    busy.send(get())
    idle.conn.finish()
    busy.conn.finish()
    assert idle.client.closed and not busy.client.closed
    busy.answer(up)
    assert b"Connection: close\r\n" in busy.client.take() and busy.client.closed


def test_trusted_peer_header_then_request() -> None:
    rig = Rig(accept_proxy="192.0.2.0/24")
    up = rig.idle_upstream()
    assert rig.state == "PROXY"
    rig.send(build_v2(("203.0.113.9", 5555), ("192.0.2.1", 80)) + get())
    assert b"X-Forwarded-For: 203.0.113.9\r\n" in up.take()


def test_trusted_peer_that_connects_and_closes_leaves_no_timer() -> None:
    """Issue 10 defect 9: a load balancer's health check (connect, close) left the header timer
    running and a false "dropping trusted peer" warning followed (here: http mode)."""
    rig = Rig(accept_proxy="192.0.2.0/24")
    with event_log() as events:
        rig.client.lose()
        assert rig.loop.armed() == []
        rig.loop.advance(TIMEOUTS.http_request + 1)
    assert events.getvalue() == ""


def test_trusted_peer_without_a_header_is_dropped_at_http_request() -> None:
    rig = Rig(accept_proxy="192.0.2.0/24")
    with event_log() as events:
        rig.send(b"PROXY TCP4 1.2.3.4 ")
        rig.loop.advance(TIMEOUTS.http_request + 0.1)
    assert rig.client.closed and rig.ctx.stats.ended == {"proxy_header_timeout": 1}
    assert "dropping trusted peer" in events.getvalue()


def test_tcp_trusted_peer_that_connects_and_closes_leaves_no_warning() -> None:
    """Issue 10 defect 9 in tcp mode, where it was observed."""
    rig = Rig(accept_proxy="192.0.2.0/24")
    rig.client.lose()  # (the rig's own http connection)
    conn = TcpConnection(rig.ctx)
    client = FakeTransport(conn)
    with event_log() as events:
        conn.connection_made(cast(Any, client))
        assert conn.eof_received() is False
        client.lose()
        rig.loop.advance(TIMEOUTS.http_request + 1)
    assert "dropping trusted peer" not in events.getvalue()
    assert rig.loop.armed() == []


def test_connection_keeps_the_timeouts_it_started_with() -> None:
    rig = Rig()
    rig.ctx.update(rig.ctx.listener, Timeouts(http_request=1.0))
    rig.loop.advance(2)
    assert not rig.client.closed  # a reload changes new connections only
    fresh = HttpConnection(rig.ctx, rig.idle)
    fresh.connection_made(cast(Any, FakeTransport(fresh)))
    rig.loop.advance(TIMEOUTS.http_request)
    assert fresh.closed == "request_timeout"
