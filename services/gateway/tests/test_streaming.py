"""Large bodies stream through the gateway in both directions with bounded buffering.

Two observations per direction: (1) the far side sees bytes long before the near side has
finished, and (2) the peak of Python heap allocations during the transfer (tracemalloc; the
gateway, the upstream and the client all live in this process) stays far below the body size.
Buffering a whole body anywhere would break both. Kernel socket buffers (which autotune to tens
of MiB on loopback) are not Python memory and are deliberately not what is bounded here.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx

MiB = 1024 * 1024
SIZE = 50 * MiB
MAX_HEAP_GROWTH = 8 * MiB


@contextmanager
def heap_peak() -> Iterator[list[int]]:
    """Yields a one-element list that holds the peak heap growth (bytes) after the block."""
    result = [0]
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        yield result
        _, peak = tracemalloc.get_traced_memory()
        result[0] = peak - baseline
    finally:
        tracemalloc.stop()


async def test_50mib_response_streams_with_bounded_memory(rig, traced_gateway) -> None:
    progress = rig.progress
    consumed = 0
    produced_at_first_chunk: int | None = None
    with heap_peak() as peak:
        async with (
            httpx.AsyncClient(base_url=traced_gateway.url, timeout=30) as client,
            client.stream("GET", f"/api/alpha/big?size={SIZE}", headers=rig.auth()) as response,
        ):
            assert response.status_code == 200
            assert "content-length" not in response.headers  # chunked all the way
            async for chunk in response.aiter_raw():
                if produced_at_first_chunk is None:
                    produced_at_first_chunk = progress.produced
                consumed += len(chunk)
    assert consumed == SIZE
    assert produced_at_first_chunk is not None and produced_at_first_chunk < SIZE
    assert peak[0] < MAX_HEAP_GROWTH, f"heap grew {peak[0] / MiB:.1f} MiB"


async def test_50mib_upload_streams_with_bounded_memory(rig, traced_gateway) -> None:
    progress = rig.progress
    progress.received = 0
    sent = 0
    upstream_started_before_end = False
    digest = hashlib.sha256()
    block = bytes(range(256)) * 256  # 64 KiB

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent, upstream_started_before_end
        while sent < SIZE:
            digest.update(block)
            yield block
            sent += len(block)
            if progress.received > 0 and sent < SIZE:
                upstream_started_before_end = True

    with heap_peak() as peak:
        async with httpx.AsyncClient(base_url=traced_gateway.url, timeout=30) as client:
            r = await client.post("/api/alpha/upload", content=body(), headers=rig.auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": SIZE, "sha256": digest.hexdigest()}
    assert upstream_started_before_end
    assert peak[0] < MAX_HEAP_GROWTH, f"heap grew {peak[0] / MiB:.1f} MiB"


async def test_large_upload_with_content_length(rig, traced_gateway) -> None:
    data = b"z" * (5 * MiB)
    async with httpx.AsyncClient(base_url=traced_gateway.url, timeout=30) as client:
        r = await client.post("/api/beta/upload", content=data, headers=rig.auth())
    assert r.status_code == 200
    assert r.json()["bytes"] == len(data)
