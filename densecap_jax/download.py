"""HTTP(S) download of one file: progress bar, resume, size and sha256 checks, atomic rename.

``download(url, path)`` fetches ``url`` into ``path + ".part"`` and renames it
to ``path`` only once complete and verified, so ``path`` never holds a
partial or unverified file. A partial ``.part`` left by an interrupted run
(a dropped connection, Ctrl-C, a full disk) is resumed with an HTTP
``Range`` request; a server that ignores ``Range`` (status 200) makes it
start over. A connection that drops mid-file is resumed in the same call up
to ``retries`` times.

Every failure is one line naming the URL and what to do
(:class:`DownloadError`, an ``OSError``; ``ChecksumError`` is its kind for
bytes that differ from the expected ones). ``file://`` URLs work too (a local
mirror), without resuming.
"""

import errno
import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request

from tqdm import tqdm

from densecap_jax import files

CHUNK_BYTES = 1 << 20
TIMEOUT_SECS = 60
PART_SUFFIX = ".part"
USER_AGENT = "densecap_jax"


class DownloadError(OSError):
  """A download that failed; one-line message naming ``url`` (``errno`` ENOSPC for a full disk)."""

  def __init__(self, message, url, error_number=None):
    super().__init__(message)
    self.url = url
    self.errno = error_number


class ChecksumError(DownloadError):
  """The downloaded bytes differ from the expected size or sha256."""


class _Received:
  """The sha256 and progress bar of the bytes the part file holds."""

  def __init__(self, bar):
    self.bar = bar
    self.digest = hashlib.sha256()

  def add(self, block):
    self.digest.update(block)
    self.bar.update(len(block))

  def restart(self):
    self.digest = hashlib.sha256()
    self.bar.reset(total=self.bar.total)


class _Dropped(Exception):
  """The connection ended before the announced length (resumable)."""

  def __init__(self, got, total):
    super().__init__(got, total)
    self.got, self.total = got, total


def human_bytes(count):
  """``"1.1 GB"``-style size (powers of 1024)."""
  value = float(count)
  for unit in ("bytes", "KB", "MB", "GB"):
    if value < 1024 or unit == "GB":
      return f"{count:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
    value /= 1024
  return ""


def _sentence(problem, url, hint):
  return f"{problem} ({url})" + (f"; {hint}" if hint else "")


def _write(f, data):
  """Appends ``data`` to the open file ``f`` (one place for every write of a download)."""
  f.write(data)


def sha256_of(path, chunk=CHUNK_BYTES):
  """The sha256 hex digest of the file at ``path``."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def _open(url, start, timeout):
  headers = {"User-Agent": USER_AGENT}
  if start:
    headers["Range"] = f"bytes={start}-"
  return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _reason(error):
  reason = getattr(error, "reason", error)
  if isinstance(reason, ConnectionRefusedError):
    return "connection refused"
  if isinstance(reason, socket.gaierror):
    return "host not found (no network?)"
  if isinstance(reason, (socket.timeout, TimeoutError)):
    return "timed out"
  text = getattr(reason, "strerror", None) or str(reason)
  return text.splitlines()[0] if text else type(reason).__name__


def _content_range_total(header):
  """``N`` of ``bytes a-b/N`` (``None`` for ``*`` or a missing header)."""
  if not header or "/" not in header:
    return None
  total = header.rsplit("/", 1)[1].strip()
  return int(total) if total.isdigit() else None


def _content_range_start(header):
  try:
    return int(header.split()[1].split("-")[0])
  except (AttributeError, IndexError, ValueError):
    return None


def _one_request(url, part, size, received, timeout, hint):
  """Fetches the rest of ``url`` onto ``part``; returns the file's total size (None: unknown).

  Adds the bytes read to ``received`` (a :class:`_Received`). Raises ``_Dropped``
  when the connection ends early (the part keeps what arrived).
  """
  start = os.path.getsize(part) if os.path.exists(part) else 0
  try:
    response = _open(url, start, timeout)
  except urllib.error.HTTPError as e:
    if e.code == 416 and start:  # the part is already the whole file, or longer
      total = _content_range_total(e.headers.get("Content-Range"))
      if total == start:
        return total
      os.remove(part)
      raise _Dropped(0, total) from None
    what = "not found" if e.code == 404 else "refused"
    raise DownloadError(_sentence(f"download {what}: HTTP {e.code} {e.reason}", url, hint),
                        url) from None
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    raise DownloadError(_sentence(f"cannot reach the server: {_reason(e)}", url, hint),
                        url) from None
  with response:
    status = response.getcode() or 200  # None for file://
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206 and _content_range_start(response.headers.get("Content-Range")) == start:
      total = _content_range_total(response.headers.get("Content-Range"))
      if total is None and length is not None:
        total = start + length
      mode = "ab"
    else:  # the server sent the whole file (it ignores Range, or nothing was asked)
      if start:
        received.restart()
      start, total, mode = 0, length, "wb"
    if size is not None and total is not None and total != size:
      raise ChecksumError(_sentence(f"the server offers {total:,} bytes, expected {size:,}",
                                    url, hint), url)
    if total is not None:
      received.bar.total = total
      received.bar.refresh()
    got = start
    try:
      with open(part, mode) as f:
        while True:
          try:
            block = response.read(CHUNK_BYTES)
          except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError):
            raise _Dropped(got, total) from None
          if not block:
            break
          _write(f, block)
          received.add(block)
          got += len(block)
    except OSError as e:
      if files.is_disk_full(e):
        raise DownloadError(_sentence(
            f"no space left on device writing {part} after {human_bytes(got)} of "
            f"{human_bytes(total) if total else 'the file'}", url,
            "free space on that disk and run again (the download resumes)"), url,
            errno.ENOSPC) from None
      raise DownloadError(_sentence(f"cannot write {part}: {e.strerror or e}", url, hint),
                          url, e.errno) from None
    if total is not None and got < total:
      raise _Dropped(got, total)
    return total if total is not None else got


def download(url, path, *, size=None, sha256=None, sha256_prefix=None, progress=True,
             retries=3, timeout=TIMEOUT_SECS, hint="", desc=None):
  """Downloads ``url`` to ``path``; returns the file's sha256 hex digest.

  Args:
    url: ``http://``, ``https://`` or ``file://`` URL.
    path: where the verified file goes (its folder is created); the bytes
      arrive in ``path + ".part"``, which a later call resumes.
    size: the expected size in bytes, or None (then the server's
      ``Content-Length`` is checked).
    sha256: the expected full sha256 hex digest, or None.
    sha256_prefix: the expected first hex digits of the sha256 (torchvision's
      file names carry 8), or None.
    progress: show a tqdm bar (bytes, rate, ETA) on stderr.
    retries: times a dropped connection is resumed within this call.
    timeout: seconds a connection may stay silent.
    hint: what the user can do, appended to every error (e.g. where to put
      a file downloaded by hand).
    desc: the progress bar's label (default: the file name).

  Raises:
    DownloadError: no network, connection refused, an HTTP error status
      (404 ...), a connection that kept dropping (the part is kept for the
      next call), a full disk (``errno`` ENOSPC; the part is kept).
    ChecksumError: a size or sha256 that differs (the part is removed).
  """
  path = os.path.abspath(path)
  part = path + PART_SUFFIX
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if os.path.exists(part) and size is not None and os.path.getsize(part) > size:
    os.remove(part)
  with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc or os.path.basename(path), disable=not progress, file=sys.stderr,
            leave=False) as bar:
    received = _Received(bar)
    if os.path.exists(part):
      with open(part, "rb") as f:
        while block := f.read(CHUNK_BYTES):
          received.add(block)
    for attempt in range(retries + 1):
      try:
        total = _one_request(url, part, size, received, timeout, hint)
        break
      except _Dropped as e:
        if attempt == retries:
          raise DownloadError(_sentence(
              f"the connection dropped after {human_bytes(e.got)} of "
              f"{human_bytes(e.total) if e.total else 'the file'} ({retries + 1} tries)", url,
              "run again to resume the download" + (f", or {hint}" if hint else "")), url) from None
        if not os.path.exists(part):  # removed after a 416: start over
          received.restart()
  got = os.path.getsize(part)
  problem = None
  if size is not None and got != size:
    problem = f"got {got:,} bytes, expected {size:,}"
  elif total is not None and got != total:
    problem = f"got {got:,} bytes, the server announced {total:,}"
  else:
    actual = received.digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
      problem = f"sha256 {actual} differs from the expected {sha256.lower()}"
    elif sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
      problem = f"sha256 {actual} does not start with the expected {sha256_prefix.lower()}"
  if problem:
    os.remove(part)
    raise ChecksumError(_sentence(f"download corrupt: {problem}", url,
                                  "run again; if it persists the server or mirror serves "
                                  "another file" + (f", {hint}" if hint else "")), url)
  os.replace(part, path)
  return received.digest.hexdigest()
