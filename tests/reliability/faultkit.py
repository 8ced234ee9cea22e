"""Tools to break things on purpose: a TCP forwarder that can be cut and restored, a raw HTTP client
that sends slowly or hangs up half-way, and a switch that makes one method of a live object fail.

The forwarder sits between imagegate and a real server (PostgreSQL, Redis): imagegate is configured
with the forwarder's port, so a test can take the server "down" for this gateway only (live
connections are reset, new ones refused) and bring it back on the same port, without touching the
shared server the other test suites use. Nothing here mocks the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class TcpForwarder:
    """A loopback TCP proxy to `target_host:target_port` that a test can cut and restore.

    `cut()` behaves like a server that crashed: every live connection is reset (both sides) and the
    port refuses new connections. `restore()` listens again on the same port, like the server coming
    back after a restart, so clients configured with this port must reconnect by themselves.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpForwarder:
        """Listen on a free loopback port (the first time) or on the same port again."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def cut(self) -> None:
        """Reset every live connection and stop listening: the server is "down"."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._live):
            transport = writer.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
        self._live.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        """Listen again on the same port: the server is back after a restart."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        if self._server is None:  # cut while this connection was being set up
            client_writer.transport.abort()
            server_writer.transport.abort()
            return
        self._live.update((client_writer, server_writer))
        pipes = [
            asyncio.create_task(self._pipe(client_reader, server_writer)),
            asyncio.create_task(self._pipe(server_reader, client_writer)),
        ]
        self._tasks.update(pipes)
        for pipe in pipes:
            pipe.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._live.discard(writer)
            if not writer.transport.is_closing():
                writer.close()


# -- a raw HTTP/1.1 client that misbehaves -------------------------------------------------------


def request_head(path: str, headers: dict[str, str], content_length: int) -> bytes:
    """The head of a POST request, with an explicit Content-Length."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names in lower case) of a response head."""
    lines = head.decode("latin-1").strip().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


@dataclass
class RawClient:
    """One raw connection to imagegate at `port`: full control over when bytes go and come."""

    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def connect(self, receive_buffer: int | None = None) -> RawClient:
        """Connect; a small `receive_buffer` makes a client that reads slowly really slow (the
        kernel stops accepting the gateway's bytes once the buffer is full)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=2**16)
        if receive_buffer is not None:
            self.writer.transport.pause_reading()
        return self

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def drip(self, data: bytes, *, chunk: int, pause_s: float) -> None:
        """Send `data` a few bytes at a time: a slow client (or a slowloris)."""
        for start in range(0, len(data), chunk):
            await self.send(data[start : start + chunk])
            await asyncio.sleep(pause_s)

    def hang_up(self) -> None:
        """Close the socket at once, whatever is in flight (an RST when data is unread)."""
        assert self.writer is not None
        self.writer.transport.abort()

    async def read_response(self, *, pause_s: float = 0.0, chunk: int = 65536) -> RawResponse:
        """Read one response (its head, then Content-Length bytes); with `pause_s`, read slowly, one
        `chunk` at a time. Does not wait for the close: aiohttp lingers on an unread request body."""
        assert self.reader is not None and self.writer is not None
        self.writer.transport.resume_reading()
        status, headers = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        length = int(headers["content-length"])
        body = bytearray()
        while len(body) < length:
            data = await self.reader.read(min(chunk, length - len(body)))
            if not data:
                raise ConnectionError(f"the gateway closed the connection after {len(body)} of {length} bytes")
            body.extend(data)
            if pause_s:
                await asyncio.sleep(pause_s)
        self.writer.close()
        return RawResponse(status, headers, bytes(body))


# -- making one method of a live object fail ------------------------------------------------------


@contextlib.contextmanager
def failing(target: Any, method: str, error: Callable[[], BaseException]) -> Iterator[list[int]]:
    """While inside, `target.method` raises `error()` (a coroutine method stays a coroutine); the
    real method comes back on exit, which is the fault being removed. Yields a one-item list that
    counts the failed calls, so a test can tell the fault was really hit."""
    had_own = method in vars(target)
    original = getattr(target, method)
    calls = [0]

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        raise error()

    async def broken_async(*args: Any, **kwargs: Any) -> Any:
        return broken(*args, **kwargs)

    setattr(target, method, broken_async if inspect.iscoroutinefunction(original) else broken)
    try:
        yield calls
    finally:
        if had_own:
            setattr(target, method, original)
        else:
            delattr(target, method)


# -- a full disk for the SQLite audit store --------------------------------------------------------------

#: SQLite's largest page count: "no limit" for `PRAGMA max_page_count`.
SQLITE_MAX_PAGES = 4294967294


async def sqlite_disk_full(store: Any, full: bool) -> int:
    """Make the disk under the SQLite audit store full (or give the space back), on the store's own
    writer connection, on its writer thread: the file may not grow by a single page, so a write that
    needs one fails with SQLITE_FULL, "database or disk is full", exactly as on a full disk. Pages on
    the free list could still be reused, so there must be none. Returns the page count."""

    def apply() -> int:
        connection = store._connection
        pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
        if full:
            free = int(connection.execute("PRAGMA freelist_count").fetchone()[0])
            assert free == 0, f"{free} free pages would still take new records"
        connection.execute(f"PRAGMA max_page_count = {pages if full else SQLITE_MAX_PAGES}").fetchone()
        return pages

    return int(await store._write(apply))
