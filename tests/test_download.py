"""download.download against a local HTTP server: resume, Range ignored, 404, refused, checks."""

import errno
import hashlib
import os

import numpy as np
import pytest

from densecap_jax import download
from file_server import FileServer, closed_port_url, one_line_naming

DATA = np.random.default_rng(0).integers(0, 256, 300_000, np.uint8).tobytes()
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
  with FileServer({"w.bin": DATA}) as s:
    yield s


def test_downloads_verifies_and_renames(server, tmp_path):
  target = tmp_path / "sub" / "w.bin"
  assert download.download(server.url + "w.bin", target, size=len(DATA), sha256=SHA,
                           sha256_prefix=SHA[:8], progress=False) == SHA
  assert target.read_bytes() == DATA
  assert os.listdir(tmp_path / "sub") == ["w.bin"]
  assert server.requests == [("w.bin", None)]


def test_progress_bar_shows_bytes_and_rate(server, tmp_path, capsys):
  download.download(server.url + "w.bin", tmp_path / "w.bin", desc="weights")
  err = capsys.readouterr().err
  assert "weights" in err and "B/s" in err


def test_dropped_connection_resumes_with_range_next_run(server, tmp_path):
  server.drops["w.bin"] = (1, 100_000)
  url = server.url + "w.bin"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "w.bin", retries=0, progress=False)
  text = one_line_naming(error.value, url)
  assert "dropped after" in text and "run again to resume" in text
  assert not (tmp_path / "w.bin").exists()
  assert (tmp_path / "w.bin.part").read_bytes() == DATA[:100_000]

  assert download.download(url, tmp_path / "w.bin", sha256=SHA, progress=False) == SHA
  assert server.requests == [("w.bin", None), ("w.bin", "bytes=100000-")]
  assert (tmp_path / "w.bin").read_bytes() == DATA
  assert not (tmp_path / "w.bin.part").exists()


def test_dropped_connection_resumes_within_the_call(server, tmp_path):
  server.drops["w.bin"] = (2, 50_000)
  assert download.download(server.url + "w.bin", tmp_path / "w.bin", sha256=SHA,
                           progress=False) == SHA
  assert [r for _, r in server.requests] == [None, "bytes=50000-", "bytes=50000-"]
  assert (tmp_path / "w.bin").read_bytes() == DATA


def test_server_ignoring_range_starts_over(server, tmp_path):
  server.range_support = False
  (tmp_path / "w.bin.part").write_bytes(DATA[:1000])
  assert download.download(server.url + "w.bin", tmp_path / "w.bin", sha256=SHA,
                           progress=False) == SHA
  assert server.requests == [("w.bin", "bytes=1000-")]
  assert (tmp_path / "w.bin").read_bytes() == DATA


def test_complete_part_is_taken_after_416(server, tmp_path):
  (tmp_path / "w.bin.part").write_bytes(DATA)
  assert download.download(server.url + "w.bin", tmp_path / "w.bin", sha256=SHA,
                           progress=False) == SHA
  assert (tmp_path / "w.bin").read_bytes() == DATA


def test_connection_that_keeps_dropping_is_truncated_and_kept(server, tmp_path):
  server.drops["w.bin"] = (10, 1000)
  url = server.url + "w.bin"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "w.bin", retries=2, progress=False, hint="do X")
  text = one_line_naming(error.value, url)
  assert "dropped after" in text and "(3 tries)" in text and text.endswith("or do X")
  assert not (tmp_path / "w.bin").exists()
  assert (tmp_path / "w.bin.part").stat().st_size == 1000


def test_404(server, tmp_path):
  url = server.url + "missing.bin"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "m.bin", progress=False, hint="download it by hand")
  text = one_line_naming(error.value, url)
  assert "not found: HTTP 404" in text and text.endswith("; download it by hand")
  assert os.listdir(tmp_path) == []


def test_server_down(tmp_path):
  url = closed_port_url() + "w.bin"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "w.bin", progress=False)
  assert "cannot reach the server: connection refused" in one_line_naming(error.value, url)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("check", [{"sha256": "0" * 64}, {"sha256_prefix": "397923af"},
                                   {"size": len(DATA) + 1}])
def test_checksum_or_size_mismatch_leaves_nothing(server, tmp_path, check):
  url = server.url + "w.bin"
  with pytest.raises(download.ChecksumError) as error:
    download.download(url, tmp_path / "w.bin", progress=False, **check)
  text = one_line_naming(error.value, url)
  assert "expected" in text
  assert os.listdir(tmp_path) == []


def test_wrong_bytes_from_a_server_fail_the_pin(server, tmp_path):
  server.files["w.bin"] = DATA[:-1] + bytes([DATA[-1] ^ 1])
  with pytest.raises(download.ChecksumError, match=f"sha256 .* differs from the expected {SHA}"):
    download.download(server.url + "w.bin", tmp_path / "w.bin", sha256=SHA, progress=False)


def test_full_disk_is_one_line_and_keeps_the_part(server, tmp_path, monkeypatch):
  writes = []

  def write(f, data):
    if writes:
      raise OSError(errno.ENOSPC, "No space left on device")
    writes.append(len(data))
    f.write(data)

  monkeypatch.setattr(download, "_write", write)
  monkeypatch.setattr(download, "CHUNK_BYTES", 65536)
  url = server.url + "w.bin"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "w.bin", progress=False)
  assert error.value.errno == errno.ENOSPC
  assert "no space left on device" in one_line_naming(error.value, url)
  assert not (tmp_path / "w.bin").exists()
  assert (tmp_path / "w.bin.part").stat().st_size == writes[0]


def test_file_url(tmp_path):
  (tmp_path / "mirror").mkdir()
  (tmp_path / "mirror" / "w.bin").write_bytes(DATA)
  url = (tmp_path / "mirror" / "w.bin").as_uri()
  assert download.download(url, tmp_path / "w.bin", sha256=SHA, progress=False) == SHA
  assert (tmp_path / "w.bin").read_bytes() == DATA
