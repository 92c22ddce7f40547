"""A minimal, fast loopback HTTP/1.1 server for the hook-overhead benchmark.

Answers every request on a keep-alive connection with the same small ``/usage/credits``-shaped JSON
body, so that server time is a few microseconds and the client's own cost shows. Loopback only; stops
on SIGTERM/SIGINT or after ``--max-seconds``.

``python -m bench._fastserver --port 0 --ready-file PATH``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

BODY = json.dumps(
    {"totalCredits": 1_000_000, "usedCredits": 0, "remainingCredits": 1_000_000, "subscription": "FAST"},
    separators=(",", ":"),
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0].strip() or 0)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def _serve(port: int, ready_file: Path | None, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(_Protocol, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(f"http://127.0.0.1:{bound}")
        os.replace(tmp, ready_file)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    server.close()
    await server.wait_closed()


def main() -> None:
    """Parse the options and serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m bench._fastserver")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.ready_file, args.max_seconds))


if __name__ == "__main__":
    main()
