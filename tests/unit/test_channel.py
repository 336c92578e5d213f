"""The supervisor/worker control channel: framed JSON with sockets passed alongside."""

from __future__ import annotations

import asyncio
import socket

import pytest

from edgeproxy.runtime.channel import Channel, ChannelClosed, Message


def test_messages_sockets_large_frames_and_replies_cross_a_socketpair() -> None:
    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        got: list[tuple[Message, list[socket.socket]]] = []
        closed = asyncio.Event()

        def on_b(msg: Message, socks: list[socket.socket]) -> None:
            got.append((msg, socks))
            if msg.get("op") == "ask":
                right.reply(msg, answer=msg["n"] * 2)

        left = Channel(a, lambda m, s: None, closed.set)
        right = Channel(b, on_b, lambda: None)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        left.send({"op": "socket"}, [listener])
        listener.close()  # the channel sent a duplicate: the receiver's copy still listens
        big = "x" * 300_000  # larger than one socket buffer: written in several parts
        left.send({"op": "big", "data": big})
        reply = await left.request({"op": "ask", "n": 21})
        assert reply["answer"] == 42
        assert [m["op"] for m, _ in got] == ["socket", "big", "ask"]
        (received,) = got[0][1]
        assert received.getsockname()[1] == port and received.type == socket.SOCK_STREAM
        assert got[1][0]["data"] == big
        received.close()
        right.close()
        await asyncio.wait_for(closed.wait(), 5)
        with pytest.raises(ChannelClosed):
            await left.request({"op": "ask", "n": 1})

    asyncio.run(main())
