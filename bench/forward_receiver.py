"""A Fluentd ``forward`` input for the benchmarks (msgpack over TCP on loopback, acks on),
counting the records it receives: the collector of the metrics-and-logs on/off benches. It
runs in a process of its own, as a real collector does: in the bench's process its threads
would take turns with the client being timed (the GIL), which no real deployment has."""

from __future__ import annotations

import multiprocessing
import socket
import threading
from typing import Any


class ForwardReceiver:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._count: Any = context.Value("q", 0)
        ready = context.Queue()
        self._process = context.Process(target=_serve_forever, args=(self._count, ready), daemon=True)
        self._process.start()
        self.port: int = ready.get(timeout=30)

    @property
    def records(self) -> int:
        return int(self._count.value)

    def close(self) -> None:
        self._process.terminate()
        self._process.join(10)


def _serve_forever(count: Any, ready: Any) -> None:
    import msgpack

    server = socket.create_server(("127.0.0.1", 0))
    ready.put(server.getsockname()[1])

    def serve(connection: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with connection:
            while data := connection.recv(65536):
                unpacker.feed(data)
                for _tag, entries, option in unpacker:
                    with count.get_lock():
                        count.value += len(entries)
                    connection.sendall(msgpack.packb({"ack": option["chunk"]}))

    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()
