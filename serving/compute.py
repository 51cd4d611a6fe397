"""One thread for a server's tensor work.

PyTorch's OpenMP runtime keeps a thread team per calling thread. When tensor work hops between
``asyncio.to_thread`` pool threads, several teams take turns on the cores and every pass is slower, the
main thread's too once a second team exists (measured: benchmarks/NOTES.md). Servers therefore send all
tensor work (decoding into tensors, inference, stitching, encoding) to this executor; ``workers`` > 1
only where a device does the arithmetic (CUDA).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ComputeExecutor:
    def __init__(self, workers: int = 1, *, name: str = "hndsr-compute") -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` on the compute thread(s)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the compute thread(s) and wait (for synchronous callers such as ``load``)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
