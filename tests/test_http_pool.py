"""The processor's HTTP pool: a batch of concurrent requests on a warm pool is served in one round each."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from restricted_sender.adapters.http import pooled_transport

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


async def serve_batches(transport: httpx.AsyncHTTPTransport, rounds: int, at_once: int) -> tuple[int, int, int]:
    """(connections the server saw, requests it answered, the pool's assignment rounds) after ``rounds`` batches of
    ``at_once`` concurrent GETs."""
    opened = answered = closed = 0
    all_closed = asyncio.Event()
    pool = transport._pool
    assign = pool._assign_requests_to_connections
    assignments = 0

    def counted() -> list[object]:
        nonlocal assignments
        assignments += 1
        return list(assign())

    pool._assign_requests_to_connections = counted  # type: ignore[method-assign,assignment]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened, answered, closed
        opened += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                answered += 1
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            closed += 1
            if closed == opened:
                all_closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(rounds):
                answers = await asyncio.gather(*(client.get("/") for _ in range(at_once)))
                assert all(a.status_code == 200 for a in answers)
        await asyncio.wait_for(all_closed.wait(), timeout=10)
    return opened, answered, assignments


@pytest.mark.parametrize("at_once", [2, 8, 16])
def test_a_batch_of_concurrent_requests_takes_one_idle_connection_each_and_one_round_of_the_pool(at_once: int) -> None:
    # httpcore's own pool hands one idle connection to every request of the batch; all but one then fail on it and go
    # round the pool again, a scan of every connection each time (16 at once: 239 rounds for 64 requests, not 128).
    opened, answered, assignments = asyncio.run(serve_batches(pooled_transport(), rounds=4, at_once=at_once))
    assert answered == 4 * at_once
    assert opened == at_once  # the first batch opens them, the next three reuse them
    assert assignments == 2 * answered  # one when a request arrives, one when its answer is read


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def scenario() -> tuple[list[int], int]:
        opened = 0
        hung_up = asyncio.Event()

        async def serve_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal opened
            opened += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)  # keep-alive offered, then the server hangs up anyway
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            hung_up.set()

        server = await asyncio.start_server(serve_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient(transport=pooled_transport(), base_url=f"http://127.0.0.1:{port}") as c:
            first = await c.get("/")
            await hung_up.wait()
            second = await c.get("/")  # within the pool's sweep interval: the chosen connection is checked itself
        return [first.status_code, second.status_code], opened

    statuses, opened = asyncio.run(scenario())
    assert statuses == [200, 200]
    assert opened == 2
