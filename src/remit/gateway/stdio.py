"""MCP on the sidecar's stdin and stdout, read and written by the event loop itself.

The SDK's ``stdio_server`` hands every line read and every write and flush to a
worker thread; on the sidecar's hot path that costs more than Remit's decision.
When stdin and stdout are pipes, sockets or terminals (as they are under an
MCP client), this transport reads and writes them with non-blocking pipe
transports instead. Anything else falls back to the SDK's transport.

Like the SDK's, it moves the wire off fds 0 and 1 while serving (fd 0 reads the
null device, fd 1 writes to stderr), so a stray print or a child process can
never corrupt or read the MCP stream, and puts them back on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
from mcp import types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

MAX_LINE_BYTES: Final = 16 * 1024 * 1024
_STREAM_KINDS = (stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISCHR)


class _WriteProtocol(asyncio.Protocol):
    """Flow control for the write side: ``drain`` waits while the pipe is full."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = False

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


def _streamable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return any(kind(mode) for kind in _STREAM_KINDS)


@contextlib.asynccontextmanager
async def stdio_transport() -> AsyncIterator[tuple[Any, Any]]:
    """``(read_stream, write_stream)`` for ``Server.run``, over this process's stdio."""
    try:
        asyncio.get_running_loop()
        native = True
    except RuntimeError:  # another event loop (trio): the SDK's transport
        native = False
    if not (native and _streamable(0) and _streamable(1)):
        async with stdio_server() as streams:
            yield streams
        return
    async with _native() as streams:
        yield streams


@contextlib.asynccontextmanager
async def _native() -> AsyncIterator[tuple[Any, Any]]:
    loop = asyncio.get_running_loop()
    wire_in = os.dup(0)
    wire_out = os.dup(1)
    in_was_blocking = os.get_blocking(wire_in)
    out_was_blocking = os.get_blocking(wire_out)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    read_transport: asyncio.BaseTransport | None = None
    write_transport: asyncio.WriteTransport | None = None
    try:
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
        write_transport, protocol = await loop.connect_write_pipe(
            _WriteProtocol, os.fdopen(wire_out, "wb", buffering=0)
        )
        incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)
        transport = write_transport

        async def read_lines() -> None:
            async with incoming_send:
                while True:
                    try:
                        line = await reader.readline()
                    except (ValueError, asyncio.LimitOverrunError) as exc:
                        await incoming_send.send(ValueError(f"message too large: {exc}"))
                        continue
                    if not line:
                        return
                    if not line.strip():
                        continue
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except Exception as exc:
                        await incoming_send.send(exc)
                        continue
                    await incoming_send.send(SessionMessage(message))

        written = anyio.Event()

        async def write_lines() -> None:
            try:
                async with outgoing_receive:
                    async for item in outgoing_receive:
                        if protocol.lost:
                            continue
                        data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                        transport.write(data.encode("utf-8") + b"\n")
                        await protocol.drain()
            finally:
                written.set()

        async with anyio.create_task_group() as group:
            group.start_soon(read_lines)
            group.start_soon(write_lines)
            try:
                yield incoming, outgoing
            finally:
                # Every answer handed over is written before the wire is let go.
                await outgoing.aclose()
                with anyio.move_on_after(5):
                    await written.wait()
                group.cancel_scope.cancel()
    finally:
        if read_transport is not None:
            read_transport.close()
        if write_transport is not None:
            write_transport.close()
        # Put the wire back where it was, blocking as it was (it may be a shared terminal).
        for saved, fd in ((saved_in, 0), (saved_out, 1)):
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
            with contextlib.suppress(OSError):
                os.close(saved)
        with contextlib.suppress(OSError):
            os.set_blocking(0, in_was_blocking)
        with contextlib.suppress(OSError):
            os.set_blocking(1, out_was_blocking)
