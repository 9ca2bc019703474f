"""Work done ahead by a pool of threads, handed out in the order of its tasks.

The loader's batches are assembled this way, and the image stream decodes
images this way (``image_stream.read_ahead``).

``OrderedWorkers(tasks, assemble, num_workers, depth)`` runs
``assemble(task)`` for the tasks of an iterator on ``num_workers`` threads,
at most ``depth`` tasks ahead of the consumer, and yields the results in the
tasks' order: what comes out does not depend on the number of workers or on
which worker finishes first. The tasks are drawn on the consumer's thread
(for the loader: the step's bucket and image indices, cheap), the work on
the workers' (reading and padding the images, where NumPy and the HDF5
reads release the GIL).
"""

import collections
import concurrent.futures


class OrderedWorkers:
  """Iterator of ``assemble(task)`` for each task, in order, computed ahead on worker threads.

  An exception raised by ``assemble`` is raised by the ``next`` call that
  reaches its task, and again by every later call.
  """

  def __init__(self, tasks, assemble, num_workers, depth):
    if num_workers < 1:
      raise ValueError(f"num_workers must be positive, got {num_workers}")
    self._tasks = iter(tasks)
    self._assemble = assemble
    self._depth = max(depth, num_workers)
    self._pool = concurrent.futures.ThreadPoolExecutor(num_workers,
                                                       thread_name_prefix="batch-worker")
    self._pending = collections.deque()
    self._tasks_done = False
    self._error = None
    self._fill()

  def _fill(self):
    while not self._tasks_done and len(self._pending) < self._depth:
      try:
        task = next(self._tasks)
      except StopIteration:
        self._tasks_done = True
        break
      self._pending.append(self._pool.submit(self._assemble, task))

  def __iter__(self):
    return self

  def __next__(self):
    if self._error is not None:
      raise self._error
    if not self._pending:
      self._fill()
      if not self._pending:
        raise StopIteration
    future = self._pending.popleft()
    try:
      self._fill()  # keeps the workers busy while the consumer waits for this one
      return future.result()
    except Exception as e:  # the same error for every later call
      self._error = e
      raise

  def close(self):
    """Drops the tasks not started and waits for the running ones."""
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    self._tasks_done = True
    self._pool.shutdown(wait=True)
