"""The pipelined Redis client under the limit store: replies in order, failures that never desync.

Against a fake RESP server (a handler function per connection) for the exact failure cases: a
connection dropped after some replies of one write, a server that never answers, garbage, an error
reply, a refused handshake. Against the real Redis for NOSCRIPT inside one write, and for a
connection cut mid-flight through the fault kit's TCP forwarder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hiredis
import pytest

from proxy.stores.limits import LimitStoreUnavailable, RedisLimitStore
from proxy.stores.resp import (
    PipelinedRedis,
    PythonReplyReader,
    RedisAddress,
    RedisConnectionError,
    RedisProtocolError,
    RedisReplyError,
    encode_command,
)
from tests.proxy.test_limits_store import REDIS_URL, plan, redis_prefix, store  # noqa: F401 - fixtures
from tests.reliability.faultkit import TcpForwarder

# -- a fake RESP server ----------------------------------------------------------------------------

#: Given one connection's commands (lists of bytes) as they arrive, write replies or close.
Handler = Callable[["FakeConnection", list[bytes]], Awaitable[None]]


class FakeConnection:
    def __init__(self, writer: asyncio.StreamWriter, number: int) -> None:
        self.writer = writer
        #: 0 for the first connection the server accepted, 1 for the next...
        self.number = number
        self.commands: list[list[bytes]] = []

    def reply(self, *raw: bytes) -> None:
        self.writer.write(b"".join(raw))

    def drop(self) -> None:
        self.writer.transport.abort()


class FakeRedis:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[FakeConnection] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for connection in self.connections:
            connection.drop()
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = FakeConnection(writer, len(self.connections))
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        self.connections.append(connection)
        parser = hiredis.Reader()  # a client's commands are RESP arrays of bulk strings
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    connection.commands.append(command)
                    await self.handler(connection, command)
        except (ConnectionError, asyncio.CancelledError):
            pass


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


#: What the check script answers for plan(): allowed, now, three rates, two budgets.
CHECK_REPLY = bulk(b"1 1750000000000000 1 2 100 0 1 7 100 0 1 99 100 0 1 0 1 0")


def count_evalsha(connection: FakeConnection) -> int:
    return sum(command[0] == b"EVALSHA" for command in connection.commands)


@pytest.fixture
async def limit_store_on() -> AsyncIterator[Callable[..., Awaitable[RedisLimitStore]]]:
    stores: list[RedisLimitStore] = []

    async def make(url: str, **options: Any) -> RedisLimitStore:
        store = RedisLimitStore(url, **options)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


# -- encoding and parsing --------------------------------------------------------------------------

REPLIES = [
    b"+OK\r\n",
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    b":-42\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$5\r\nhe\r\nl\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n$3\r\nnew\r\n:7\r\n*2\r\n$1\r\na\r\n$-1\r\n",
    bulk(bytes(range(256)) * 1000),
]


def drain(reader: Any) -> list[Any]:
    out = []
    while (reply := reader.gets()) is not False:
        out.append(str(reply) if isinstance(reply, Exception) else reply)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_python_reader_reads_what_hiredis_reads(chunk: int) -> None:
    stream = b"".join(REPLIES)
    ours, theirs = PythonReplyReader(), hiredis.Reader(replyError=RedisReplyError)
    got: list[Any] = []
    expected: list[Any] = []
    for start in range(0, len(stream), chunk):
        ours.feed(stream[start : start + chunk])
        theirs.feed(stream[start : start + chunk])
        got += drain(ours)
        expected += drain(theirs)
    assert got == expected and len(got) == len(REPLIES)
    assert got[0] == b"OK" and got[1].startswith("NOSCRIPT") and got[8] == [b"new", 7, [b"a", None]]


def test_python_reader_refuses_garbage() -> None:
    reader = PythonReplyReader()
    reader.feed(b"?what\r\n")
    with pytest.raises(RedisProtocolError):
        reader.gets()
    reader = PythonReplyReader()
    reader.feed(b"$x1\r\n")
    with pytest.raises(RedisProtocolError):
        reader.gets()


def test_commands_are_encoded_as_arrays_of_bulk_strings() -> None:
    assert encode_command("EVALSHA", "ab", 2, b"k\r\n", "", -5) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk\r\n\r\n$0\r\n\r\n$2\r\n-5\r\n"
    )
    reader = hiredis.Reader()
    reader.feed(encode_command("SET", "ké", 1.5))
    assert reader.gets() == [b"SET", "ké".encode(), b"1.5"]


def test_urls_are_read_as_redis_py_reads_them() -> None:
    plain = RedisAddress.from_url("redis://:secret@cache.internal:6380/2")
    assert (plain.host, plain.port, plain.db, plain.username, plain.password) == ("cache.internal", 6380, 2, None, "secret")
    assert plain.ssl_context is None and plain.path is None
    tls = RedisAddress.from_url("rediss://svc:pw@cache.internal?ssl_cert_reqs=none")
    assert tls.ssl_context is not None and tls.ssl_context.check_hostname is False and tls.username == "svc"
    unix = RedisAddress.from_url("unix:///run/redis.sock?db=3")
    assert unix.path == "/run/redis.sock" and unix.db == 3


# -- the client against a fake server --------------------------------------------------------------


async def test_replies_go_to_their_callers_in_order() -> None:
    async def echo_later(connection: FakeConnection, command: list[bytes]) -> None:
        connection.reply(bulk(command[1]))

    async with FakeRedis(echo_later) as fake:
        redis = PipelinedRedis(fake.url)
        try:
            values = [str(i).encode() for i in range(500)]
            assert await asyncio.gather(*[redis.execute("ECHO", value) for value in values]) == values
        finally:
            await redis.close()
        assert fake.connections and len(fake.connections) == 1  # one connection, many commands


async def test_a_cancelled_caller_does_not_shift_the_replies() -> None:
    release = asyncio.Event()

    async def slow_first(connection: FakeConnection, command: list[bytes]) -> None:
        if command[1] == b"first":
            await release.wait()
        connection.reply(bulk(command[1]))

    async with FakeRedis(slow_first) as fake:
        redis = PipelinedRedis(fake.url, timeout_s=5)
        try:
            first = asyncio.ensure_future(redis.execute("ECHO", "first"))
            await asyncio.sleep(0.05)
            first.cancel()
            second = asyncio.ensure_future(redis.execute("ECHO", "second"))
            await asyncio.sleep(0.01)
            release.set()
            assert await second == b"second"
            assert await redis.execute("ECHO", "third") == b"third"
        finally:
            await redis.close()


async def test_close_waits_for_the_replies_still_due() -> None:
    async def echo_slowly(connection: FakeConnection, command: list[bytes]) -> None:
        await asyncio.sleep(0.01)
        connection.reply(bulk(command[1]))

    async with FakeRedis(echo_slowly) as fake:
        redis = PipelinedRedis(fake.url, timeout_s=2)
        assert await redis.execute("ECHO", "open") == b"open"
        calls = [asyncio.ensure_future(redis.execute("ECHO", str(i))) for i in range(5)]
        await asyncio.sleep(0)
        await redis.close()
        assert await asyncio.gather(*calls) == [str(i).encode() for i in range(5)]


async def test_the_handshake_authenticates_and_selects_the_database() -> None:
    async def answer(connection: FakeConnection, command: list[bytes]) -> None:
        if command[0] == b"AUTH" and command[-1] != b"right":
            connection.reply(b"-WRONGPASS invalid username-password pair\r\n")
        else:
            connection.reply(b"+OK\r\n" if command[0] != b"PING" else b"+PONG\r\n")

    async with FakeRedis(answer) as fake:
        redis = PipelinedRedis(f"redis://svc:right@127.0.0.1:{fake.port}/3")
        assert await redis.execute("PING") == b"PONG"
        await redis.close()
        assert fake.connections[0].commands == [[b"AUTH", b"svc", b"right"], [b"SELECT", b"3"], [b"PING"]]

        store = RedisLimitStore(f"redis://:wrong@127.0.0.1:{fake.port}/0")
        with pytest.raises(LimitStoreUnavailable, match="handshake refused: WRONGPASS"):
            await store.check(*plan(), 0)
        assert not await store.ping()
        await store.close()


# -- the limit store against a fake server ---------------------------------------------------------


async def test_a_connection_dropped_after_some_replies_fails_only_the_unanswered(limit_store_on) -> None:
    async def answer_four_then_drop(connection: FakeConnection, command: list[bytes]) -> None:
        if connection.number > 0:
            connection.reply(CHECK_REPLY)
        elif count_evalsha(connection) <= 4:
            connection.reply(CHECK_REPLY)
        else:
            connection.drop()

    async with FakeRedis(answer_four_then_drop) as fake:
        store = await limit_store_on(fake.url)
        assert (await store.check(*plan(), 0)).allowed  # connected, one reply of four used
        results = await asyncio.gather(*[store.check(*plan(), 0) for _ in range(10)], return_exceptions=True)
        answered = [result for result in results if not isinstance(result, BaseException)]
        failed = [result for result in results if isinstance(result, BaseException)]
        assert len(answered) == 3 and all(outcome.allowed for outcome in answered)
        assert len(failed) == 7 and all(isinstance(error, LimitStoreUnavailable) for error in failed)
        assert "connection" in str(failed[0])
        # Nothing was sent again on the broken connection; the next call opens a new one.
        assert count_evalsha(fake.connections[0]) == 11
        assert (await store.check(*plan(), 0)).allowed
        assert len(fake.connections) == 2 and count_evalsha(fake.connections[1]) == 1
        assert store.redis.connects == 2


async def test_a_server_that_never_answers_times_out_and_the_next_call_reconnects(limit_store_on) -> None:
    async def silent_first(connection: FakeConnection, command: list[bytes]) -> None:
        if connection.number > 0:
            connection.reply(CHECK_REPLY)

    async with FakeRedis(silent_first) as fake:
        store = await limit_store_on(fake.url, timeout_s=0.2)
        started = time.monotonic()
        results = await asyncio.gather(*[store.check(*plan(), 0) for _ in range(5)], return_exceptions=True)
        assert 0.15 < time.monotonic() - started < 1.5
        assert all(isinstance(result, LimitStoreUnavailable) and "timeout" in str(result) for result in results)
        assert (await store.check(*plan(), 0)).allowed
        assert len(fake.connections) == 2


async def test_a_long_reply_still_arriving_is_waited_for_and_a_stalled_one_is_not() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, sent in 8 pieces over about 0.4 s (each under the timeout)
    reply = bulk(payload)
    stall_after: dict[bytes, int] = {b"slow": 8, b"stalled": 2}

    async def trickle(connection: FakeConnection, command: list[bytes]) -> None:
        piece = len(reply) // 8 + 1
        for index in range(stall_after[command[1]]):
            connection.reply(reply[index * piece : (index + 1) * piece])
            await asyncio.sleep(0.05)

    async with FakeRedis(trickle) as fake:
        # 10x the gap between pieces: a busy machine's scheduling delay must not look like a stall.
        redis = PipelinedRedis(fake.url, timeout_s=0.5)
        try:
            assert await redis.execute("GET", "slow") == payload
            started = time.monotonic()
            with pytest.raises(RedisConnectionError, match="timeout"):
                await redis.execute("GET", "stalled")
            assert time.monotonic() - started < 2.0
        finally:
            await redis.close()


async def test_garbage_from_the_server_fails_the_waiting_calls(limit_store_on) -> None:
    async def garbage_first(connection: FakeConnection, command: list[bytes]) -> None:
        connection.reply(b"%not resp\r\n" if connection.number == 0 else CHECK_REPLY)

    async with FakeRedis(garbage_first) as fake:
        store = await limit_store_on(fake.url)
        with pytest.raises(LimitStoreUnavailable, match="RedisProtocolError"):
            await store.check(*plan(), 0)
        assert (await store.check(*plan(), 0)).allowed


async def test_an_error_reply_fails_its_call_only(limit_store_on) -> None:
    async def second_is_an_error(connection: FakeConnection, command: list[bytes]) -> None:
        if count_evalsha(connection) == 2:
            connection.reply(b"-ERR Error running script: out of memory\r\n")
        else:
            connection.reply(CHECK_REPLY)

    async with FakeRedis(second_is_an_error) as fake:
        store = await limit_store_on(fake.url)
        results = await asyncio.gather(*[store.check(*plan(), 0) for _ in range(3)], return_exceptions=True)
        assert [type(result).__name__ for result in results] == ["CheckOutcome", "LimitStoreUnavailable", "CheckOutcome"]
        assert "out of memory" in str(results[1])
        assert len(fake.connections) == 1  # an error reply leaves the connection in step


async def test_noscript_is_retried_with_eval_for_that_call_only(limit_store_on) -> None:
    async def forgot_the_script(connection: FakeConnection, command: list[bytes]) -> None:
        if command[0] == b"EVALSHA" and count_evalsha(connection) % 2 == 0:
            connection.reply(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        else:
            connection.reply(CHECK_REPLY)

    async with FakeRedis(forgot_the_script) as fake:
        store = await limit_store_on(fake.url)
        outcomes = await asyncio.gather(*[store.check(*plan(), 0) for _ in range(6)])
        assert all(outcome.allowed for outcome in outcomes)
        names = [command[0] for command in fake.connections[0].commands]
        assert names.count(b"EVALSHA") == 6 and names.count(b"EVAL") == 3
        # The EVAL carries the same keys and arguments as the EVALSHA it replaces.
        evalsha = next(command for command in fake.connections[0].commands if command[0] == b"EVALSHA")
        evals = [command for command in fake.connections[0].commands if command[0] == b"EVAL"]
        assert all(command[2:] == evalsha[2:] for command in evals)


async def test_unreachable_server_is_unavailable_and_ping_is_false(limit_store_on) -> None:
    store = await limit_store_on("redis://127.0.0.1:1/0", timeout_s=0.2)
    with pytest.raises(LimitStoreUnavailable, match="cannot connect"):
        await store.settle(plan()[1], -5)
    assert not await store.ping()


# -- the limit store against the real Redis --------------------------------------------------------


@pytest.mark.redis
async def test_noscript_inside_one_write_reruns_only_the_refused_calls(store: RedisLimitStore) -> None:
    rates, _ = plan(user="flush-mid-write")
    assert await store.ping()  # connected: what follows goes out in one write
    flush = encode_command("SCRIPT", "FLUSH")
    results = await asyncio.gather(
        store.check(rates, [], 0), store.redis.call(flush), *[store.check(rates, [], 0) for _ in range(4)]
    )
    checks = [results[0], *results[2:]]
    # burst_requests is 3: each of the five checks counted once, the first before the flush.
    assert [outcome.allowed for outcome in checks] == [True, True, True, False, False]
    assert [outcome.rates[0].remaining for outcome in checks[:3]] == [2, 1, 0]
    assert store.redis.connects == 1
    assert (await store.check(rates, [], 0)).rates[0].remaining == 0  # the script is loaded again


@pytest.mark.redis
async def test_replies_stay_in_step_with_the_real_redis(store: RedisLimitStore) -> None:
    values = [f"value-{i}".encode() for i in range(2000)]
    assert await asyncio.gather(*[store.redis.execute("ECHO", value) for value in values]) == values


@pytest.mark.redis
async def test_steady_traffic_longer_than_the_timeout_does_not_time_out(redis_prefix: str) -> None:
    # Traffic for three times the timeout: a timeout on the connection's age would fire. The
    # timeout itself leaves room for a busy machine's stall on one reply (0.2 s left little).
    store = RedisLimitStore(REDIS_URL, key_prefix=redis_prefix, timeout_s=0.5)
    await store.start()
    try:
        rates, budgets = plan(user="steady")
        deadline = time.monotonic() + 1.5

        async def worker() -> int:
            done = 0
            while time.monotonic() < deadline:
                await store.check(rates, budgets, 0)
                done += 1
            return done

        assert sum(await asyncio.gather(*[worker() for _ in range(8)])) > 50
        assert store.redis.connects == 1
    finally:
        await store.close()


@pytest.mark.redis
async def test_a_connection_cut_mid_flight_fails_closed_then_recovers(redis_prefix: str) -> None:
    forwarder = await TcpForwarder("127.0.0.1", 6379).start()
    store = RedisLimitStore(f"redis://127.0.0.1:{forwarder.port}/0", key_prefix=redis_prefix, timeout_s=0.5)
    await store.start()
    try:
        rates, budgets = plan(user="cut")
        assert (await store.check(rates, budgets, 0)).allowed

        async def cut_soon() -> None:
            await asyncio.sleep(0)
            await forwarder.cut()

        results = await asyncio.gather(
            *[store.check(rates, budgets, 0) for _ in range(200)], cut_soon(), return_exceptions=True
        )
        checks = results[:200]
        assert all(isinstance(result, LimitStoreUnavailable) or hasattr(result, "allowed") for result in checks)
        assert any(isinstance(result, LimitStoreUnavailable) for result in checks)
        with pytest.raises(LimitStoreUnavailable):  # down: refused at once, not hung
            await store.check(rates, budgets, 0)
        await forwarder.restore()
        assert (await store.check(rates, budgets, 0)).rates  # reconnected by itself
        assert await store.ping()
    finally:
        await store.close()
        await forwarder.close()
