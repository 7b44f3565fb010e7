"""Items produced on a thread of their own, one step ahead of the caller.

A slice's stages are pyarrow and polars work that releases the GIL: the source's parsing,
the contract's checks and the steps each run on their own thread, so a batch is checked
while the one before it goes through the steps, on the second core.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

PUT_POLL = 0.1  # seconds between looks at the stop flag while the consumer is behind


def ahead(items: Iterator[T], name: str) -> Iterator[T]:
    """``items`` produced on thread ``name`` one item ahead of the caller. An exception of the
    producer is raised in the caller, at the item it would have been; closing the returned
    generator stops the producer (after the item it is producing) and waits for it."""
    slot: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slot.put(item, timeout=PUT_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            more, item = slot.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()
