"""Micro-batching: requests that arrive together run as one batch in one worker thread.

The event loop only queues work and awaits futures; the batch function runs in
a dedicated thread, so the loop keeps accepting and answering requests while
the model computes. A batch starts with the first waiting item and takes
whatever else arrives within ``wait_s`` seconds, up to ``max_batch`` items;
items queued while a batch runs go into the next one straight away.
"""

import asyncio
import concurrent.futures
import dataclasses


class QueueFullError(Exception):
  """Raised by ``MicroBatcher.submit`` when ``max_pending`` items already wait."""


@dataclasses.dataclass
class BatchStats:
  """Counters since start-up: items run, batches run, the largest batch."""
  items: int = 0
  batches: int = 0
  largest_batch: int = 0


class MicroBatcher:
  """Runs ``run_batch(items) -> results`` on batches of submitted items.

  Use from one event loop: ``await start()``, then ``await submit(item)`` from
  any number of tasks, ``await stop()`` at the end.
  """

  def __init__(self, run_batch, *, max_batch, wait_s, max_pending):
    """
    Args:
      run_batch: ``list -> list`` of the same length, results in item order;
        called in the worker thread. An exception fails every item of the batch.
      max_batch: most items per call.
      wait_s: how long a batch waits for more items after its first, seconds.
      max_pending: most items waiting at once; ``submit`` raises
        ``QueueFullError`` beyond that.
    """
    if max_batch < 1:
      raise ValueError(f"max_batch must be positive, got {max_batch}")
    if wait_s < 0:
      raise ValueError(f"wait_s must be non-negative, got {wait_s}")
    self._run_batch = run_batch
    self.max_batch = max_batch
    self.wait_s = wait_s
    self.max_pending = max_pending
    self.stats = BatchStats()
    self._queue = None
    self._task = None
    self._executor = None

  async def start(self):
    self._queue = asyncio.Queue()
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="densecap-model")
    self._task = asyncio.create_task(self._serve())

  async def stop(self):
    """Stops taking batches; a batch running (or compiling) finishes in its thread unwaited."""
    self._task.cancel()
    try:
      await self._task
    except asyncio.CancelledError:
      pass
    self._executor.shutdown(wait=False, cancel_futures=True)

  async def submit(self, item):
    """Queues ``item`` and returns its result once its batch has run."""
    if self._queue.qsize() >= self.max_pending:
      raise QueueFullError(f"{self._queue.qsize()} requests are already waiting")
    future = asyncio.get_running_loop().create_future()
    self._queue.put_nowait((item, future))
    return await future

  async def _collect(self):
    """The next batch of ``(item, future)`` pairs: the first waiting one and those that follow."""
    batch = [await self._queue.get()]
    deadline = asyncio.get_running_loop().time() + self.wait_s
    while len(batch) < self.max_batch:
      if not self._queue.empty():
        batch.append(self._queue.get_nowait())
        continue
      remaining = deadline - asyncio.get_running_loop().time()
      if remaining <= 0:
        break
      getter = asyncio.ensure_future(self._queue.get())
      await asyncio.wait({getter}, timeout=remaining)
      if not getter.done():
        getter.cancel()  # a cancelled get leaves its item in the queue
        await asyncio.wait({getter})
      if getter.cancelled():
        break
      batch.append(getter.result())
    return batch

  async def _serve(self):
    loop = asyncio.get_running_loop()
    while True:
      batch = [(item, future) for item, future in await self._collect() if not future.done()]
      if not batch:
        continue
      items = [item for item, _ in batch]
      try:
        results = await loop.run_in_executor(self._executor, self._run_batch, items)
      except Exception as e:  # pylint: disable=broad-except
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      self.stats.items += len(batch)
      self.stats.batches += 1
      self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
      for (_, future), result in zip(batch, results):
        if not future.done():
          future.set_result(result)
