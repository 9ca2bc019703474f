"""A local HTTP server for download tests: files in memory, Range on or off, drops, 404s.

``with FileServer({"a.zip": data}) as server:`` serves ``server.url + "a.zip"``
on 127.0.0.1 in a thread. ``server.requests`` logs ``(path, Range header)``
of each GET; ``server.drops[path] = (count, at)`` makes the next ``count``
responses of ``path`` stop after byte ``at`` of the file (the connection is
closed with the full length announced); ``server.range_support = False``
makes it answer every request with the whole file (status 200).
"""

import http.server
import re
import threading


class FileServer:

  def __init__(self, files=None):
    self.files = dict(files or {})
    self.range_support = True
    self.drops = {}
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_GET(self):  # pylint: disable=invalid-name
        path = self.path.lstrip("/")
        server.requests.append((path, self.headers.get("Range")))
        if path not in server.files:
          self.send_error(404, "Not Found")
          return
        data = server.files[path]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.range_support:
          start = int(match.group(1))
          if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
          self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        count, at = server.drops.get(path, (0, None))
        if count:
          server.drops[path] = (count - 1, at)
          self.wfile.write(data[start:max(at, start)])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(data[start:])

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.stopped = False

  def __enter__(self):
    self.thread.start()
    return self

  def stop(self):
    if not self.stopped:
      self.stopped = True
      self.httpd.shutdown()
      self.httpd.server_close()

  def __exit__(self, *exc):
    self.stop()


def closed_port_url():
  """A URL on 127.0.0.1 where nothing listens (connection refused)."""
  with FileServer() as server:
    url = server.url
  return url


def one_line_naming(error, url):
  """The text of ``error``, asserted to be one line that names ``url``."""
  text = str(error)
  assert len(text.splitlines()) == 1, text
  assert url in text, text
  return text
