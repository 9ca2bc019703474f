"""Disk faults for the checkpoint tests: bytes damaged in place, a full disk."""

import errno
import os

from orbax.checkpoint._src.serialization import type_handlers


def flip_bytes_of_largest_file(directory, count=64):
  """Inverts ``count`` bytes in the middle of the largest file under ``directory`` (same size)."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  largest = max(paths, key=os.path.getsize)
  size = os.path.getsize(largest)
  with open(largest, "r+b") as f:
    f.seek(size // 2)
    data = f.read(count)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  assert os.path.getsize(largest) == size
  return largest


def no_space_left(monkeypatch):
  """Every orbax array write fails as on a full disk."""

  async def full(*args, **kwargs):
    del args, kwargs
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", full)
