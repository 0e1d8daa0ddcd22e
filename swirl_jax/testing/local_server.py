"""An HTTP server on 127.0.0.1 for the duration of a `with` block (judge and search servers in tests)."""

import contextlib
import http.server
import threading


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]):
  """Serves `handler` on 127.0.0.1 at a free port in a thread; yields the port."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield server.server_address[1]
  finally:
    server.shutdown()
    server.server_close()
