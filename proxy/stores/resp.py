"""A small Redis client for the limit store's hot path: many commands, one connection, one write.

Why not redis-py here: its per-command packing and per-reply timeout cost more CPU than the limit
check itself (about 15 us a call), and the limit store makes one call per request. This client
writes every command queued during one event-loop turn in a single write (pipelining without a
pipeline object) and hands the replies back to the callers in order, since Redis answers one
connection's commands in the order it received them. One timer watches the oldest unanswered
command, not one timer per command.

It speaks RESP2 over TCP, TLS or a Unix socket; the URL is read by redis-py's own `parse_url`, so
`limits.redis_url` means the same as everywhere else. Replies are parsed by hiredis when it is
installed, by `PythonReplyReader` otherwise.

What it must never do: retry a command that may have reached the server (a check is not
idempotent), or keep using a connection whose replies may be out of step with its callers. On a
timeout, a protocol error or a lost connection, the connection is closed and every caller still
waiting on it gets `RedisConnectionError`; the next call opens a fresh connection.

Errors: `RedisConnectionError` (connect, timeout, lost connection, protocol error) is raised;
`RedisReplyError` (an error reply such as `NOSCRIPT` or `ERR`) is returned as the reply by `call`,
so the caller decides, and raised by `execute`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PipelinedRedis", "PythonReplyReader", "RedisAddress", "RedisConnectionError", "RedisProtocolError",
    "RedisReplyError", "encode_command",
]


class RedisConnectionError(ConnectionError):
    """The command's outcome is unknown: no connection, a timeout, or the connection broke."""


class RedisProtocolError(RedisConnectionError):
    """The server sent bytes that are not RESP2."""


class RedisReplyError(Exception):
    """An error reply from the server (`-NOSCRIPT ...`, `-ERR ...`): the command did not run."""


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def bulk(data: bytes) -> bytes:
    """One RESP2 bulk string (`$<len>\\r\\n<data>\\r\\n`)."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_command(*args: Any) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    return b"".join([b"*%d\r\n" % len(args), *(bulk(_encode(arg)) for arg in args)])


# -- replies ---------------------------------------------------------------------------------------


class _Incomplete(Exception):
    pass


class PythonReplyReader:
    """RESP2 reply parser with hiredis.Reader's interface: `feed(bytes)`, `gets()` -> reply or False.

    Simple and bulk strings come back as bytes, integers as int, arrays as lists, nil as None and
    error replies as `RedisReplyError` instances (returned, not raised, as hiredis does).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def gets(self) -> Any:
        try:
            reply, pos = self._parse(self._pos)
        except _Incomplete:
            return False
        if pos == len(self._buffer) or pos > 65536:
            del self._buffer[:pos]
            pos = 0
        self._pos = pos
        return reply

    def _parse(self, pos: int) -> tuple[Any, int]:
        buffer = self._buffer
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind = buffer[pos]
        line = bytes(buffer[pos + 1 : end])
        pos = end + 2
        try:
            if kind == 36:  # $ bulk string
                size = int(line)
                if size < 0:
                    return None, pos
                if len(buffer) < pos + size + 2:
                    raise _Incomplete
                return bytes(buffer[pos : pos + size]), pos + size + 2
            if kind == 58:  # : integer
                return int(line), pos
            if kind == 42:  # * array
                size = int(line)
                if size < 0:
                    return None, pos
                items = []
                for _ in range(size):
                    item, pos = self._parse(pos)
                    items.append(item)
                return items, pos
        except ValueError as exc:
            raise RedisProtocolError(f"bad RESP header {bytes(buffer[pos - 2 - len(line) - 1 : pos])!r}") from exc
        if kind == 43:  # + simple string
            return line, pos
        if kind == 45:  # - error
            return RedisReplyError(line.decode("utf-8", "replace")), pos
        raise RedisProtocolError(f"bad RESP type byte {bytes([kind])!r}")


def _reader_factory() -> Callable[[], Any]:
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis is a declared dependency
        return PythonReplyReader
    return lambda: hiredis.Reader(protocolError=RedisProtocolError, replyError=RedisReplyError)


# -- addresses -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    #: A Unix socket path (`unix://` URLs); host and port are then unused.
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """`redis://`, `rediss://` and `unix://` URLs, read exactly as redis-py reads them."""
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

        options = parse_url(url)
        connection_class = options.get("connection_class")
        context = None
        if connection_class is SSLConnection:
            context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            if options.get("ssl_certfile"):
                context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
            requirement = str(options.get("ssl_cert_reqs", "required")).lower()
            if requirement in ("none", "optional") or options.get("ssl_check_hostname") is False:
                context.check_hostname = False
            if requirement == "none":
                context.verify_mode = ssl.CERT_NONE
            elif requirement == "optional":
                context.verify_mode = ssl.CERT_OPTIONAL
        return cls(
            host=options.get("host") or "127.0.0.1",
            port=int(options.get("port") or 6379),
            path=options.get("path") if connection_class is UnixDomainSocketConnection else None,
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            ssl_context=context,
        )


# -- the connection --------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One socket: commands go out in one write per loop turn, replies go to waiters in order."""

    def __init__(self, timeout_s: float, max_batch: int, reader: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._reader = reader
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        #: Futures of the commands sent or queued, oldest first; one per reply still to come.
        self._waiting: deque[asyncio.Future[Any]] = deque()
        #: (commands written so far, deadline) per write, oldest first; and replies received so far.
        self._written = 0
        self._answered = 0
        self._deadlines: deque[tuple[int, float]] = deque()
        #: When bytes last came in: a long reply still arriving is not a server that hangs.
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.error: BaseException | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        reader = self._reader
        waiting = self._waiting
        answered = 0
        try:
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                future = waiting.popleft()
                answered += 1
                if not future.done():
                    future.set_result(reply)
                reply = reader.gets()
        except IndexError:
            self._abort(RedisProtocolError("a reply that no command asked for"))
        except RedisProtocolError as exc:
            self._abort(exc)
        self._answered += answered

    # sending

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed:
            raise RedisConnectionError(f"connection closed: {self.error}")
        future = self._loop.create_future()
        self._waiting.append(future)
        self._outgoing.append(command)
        if len(self._outgoing) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing = self._outgoing
        if self.closed or not outgoing:
            return
        self._outgoing = []
        assert self._transport is not None
        self._transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])
        self._written += len(outgoing)
        deadline = self._loop.time() + self._timeout_s
        self._deadlines.append((self._written, deadline))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= self._answered:
            deadlines.popleft()
        if not deadlines:
            return
        # Due: `timeout_s` after the oldest unanswered write, and `timeout_s` after the last bytes.
        due = max(deadlines[0][1], self._last_data + self._timeout_s)
        if due <= self._loop.time():
            self._abort(RedisConnectionError(f"timeout: no reply within {self._timeout_s:g} s"))
        else:
            self._timer = self._loop.call_at(due, self._check_deadline)

    # ending

    def _abort(self, error: RedisConnectionError) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: RedisConnectionError) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        self._outgoing = []
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the replies still due."""
        pending = [future for future in self._waiting if not future.done()]
        if pending and not self.closed:
            await asyncio.wait(pending, timeout=timeout_s)

    def close(self) -> None:
        self._fail(RedisConnectionError("connection closed by the client"))
        if self._transport is not None:
            self._transport.close()


class PipelinedRedis:
    """Commands from any number of tasks over one connection, opened on first use and after a loss.

    `timeout_s` bounds connecting (with the AUTH and SELECT handshake) and the wait for replies:
    the connection is given up when a write has waited longer for its replies and no bytes came for
    as long (a long reply still arriving is waited for). `max_batch` is the most commands in a write.
    """

    def __init__(self, url: str, *, timeout_s: float = 0.5, max_batch: int = 256) -> None:
        self.address = RedisAddress.from_url(url)
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self._new_reader = _reader_factory()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        #: Connections opened so far (a reconnect adds one): for metrics and tests.
        self.connects = 0

    async def call(self, command: bytes) -> Any:
        """Send one encoded command; its reply, an error reply as a `RedisReplyError` instance."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(command)

    async def execute(self, *args: Any) -> Any:
        """`call` for a command given as arguments, raising an error reply."""
        reply = await self.call(encode_command(*args))
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def close(self) -> None:
        """Close the connection once the replies still due have come (at most `timeout_s`)."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.drain(self.timeout_s)
            connection.close()

    # connecting

    async def _connect(self) -> _Connection:
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(self._opened)
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        connection = _Connection(self.timeout_s, self.max_batch, self._new_reader())
        try:
            async with asyncio.timeout(self.timeout_s):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: connection, address.path)
                else:
                    await loop.create_connection(
                        lambda: connection, address.host, address.port, ssl=address.ssl_context
                    )
                handshake = []
                if address.password is not None:
                    credentials = (address.username, address.password) if address.username else (address.password,)
                    handshake.append(connection.send(encode_command("AUTH", *credentials)))
                if address.db:
                    handshake.append(connection.send(encode_command("SELECT", address.db)))
                for reply in await asyncio.gather(*handshake):
                    if isinstance(reply, RedisReplyError):
                        raise RedisConnectionError(f"handshake refused: {reply}")
        except RedisConnectionError:
            connection.close()
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            connection.close()
            where = address.path or f"{address.host}:{address.port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        self.connects += 1
        return connection
