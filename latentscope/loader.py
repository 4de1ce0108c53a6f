"""A prefetching loader: worker threads read and decode files ahead of the model, in order.

Decoding (Pillow), hashing (hashlib) and the uint8 -> float conversion release
the GIL, so threads overlap with the model's forward pass without the cost of
worker processes. Batches come out in input order, so results are reproducible
and resumable at batch boundaries.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import threading
from collections import deque
from typing import Callable, Generic, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


class DaemonThreadPool:
    """A minimal thread pool whose threads are daemons, so a task stuck in C code cannot block the process exit.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit; a decoder that hangs would
    then hang latentscope too. A task that outlives its time limit is abandoned and a fresh thread takes its place.
    """

    def __init__(self, workers: int, name: str = "latentscope-load"):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._name = name
        self._threads: list[threading.Thread] = []
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            future, fn, arg = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(arg))
            except BaseException as exc:  # delivered to whoever waits on the future
                future.set_exception(exc)

    def submit(self, fn: Callable, arg) -> cf.Future:
        future: cf.Future = cf.Future()
        self._tasks.put((future, fn, arg))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


def lower_thread_priority(niceness: int = 5) -> None:
    """Let the model's compute threads win the CPU over this loader thread (Linux; no-op elsewhere)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class PrefetchLoader(Generic[T, R]):
    """Map ``work`` over ``tasks`` in worker threads and yield ordered batches of results.

    ``collate`` turns a list of results into a batch (run in the background thread
    too, so the consumer only ever waits when the workers are genuinely behind).
    A task taking longer than ``timeout`` seconds yields ``on_timeout(task)``.
    """

    def __init__(
        self,
        tasks: Sequence[T],
        work: Callable[[T], R],
        batch_size: int,
        collate: Callable[[list[R]], object] = list,
        workers: int | None = None,
        prefetch_batches: int = 3,
        timeout: float | None = None,
        on_timeout: Callable[[T], R] | None = None,
    ):
        self.tasks = tasks
        self.work = work
        self.batch_size = max(1, int(batch_size))
        self.collate = collate
        self.workers = workers or default_workers()
        self.prefetch_batches = max(1, prefetch_batches)
        self.timeout = timeout
        self.on_timeout = on_timeout

    def __len__(self) -> int:
        return (len(self.tasks) + self.batch_size - 1) // self.batch_size

    def _work(self, task: T) -> R:
        lower_thread_priority()
        return self.work(task)

    def _result(self, task: T, future: cf.Future, pool: DaemonThreadPool) -> R:
        try:
            return future.result(timeout=self.timeout)
        except cf.TimeoutError:
            if self.on_timeout is None:
                raise
            if not future.cancel():  # already running: that thread is stuck, so add one in its place
                pool.add_worker()
            return self.on_timeout(task)

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        pool = DaemonThreadPool(self.workers)
        try:
            pending: deque = deque()
            source: Iterator[T] = iter(self.tasks)
            window = self.batch_size * (self.prefetch_batches + 1)

            def refill() -> None:
                while len(pending) < window:
                    try:
                        task = next(source)
                    except StopIteration:
                        return
                    pending.append((task, pool.submit(self._work, task)))

            refill()
            while pending and not stop.is_set():
                results = []
                while pending and len(results) < self.batch_size:
                    task, future = pending.popleft()
                    results.append(self._result(task, future, pool))
                    refill()
                batch = self.collate(results)
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            out.put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
        finally:
            pool.shutdown()

    def __iter__(self) -> Iterator[object]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(out, stop), daemon=True, name="latentscope-batcher")
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
