"""A small real HTTP service: serves the page its build step made, and /health."""

import http.server
import os
import sys
from pathlib import Path

PAGE = Path(__file__).with_name("build") / "index.html"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body, kind = b"ok\n", "text/plain"
        else:
            body, kind = PAGE.read_bytes(), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8573"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"hello: serving http://127.0.0.1:{port}/ (version {os.environ.get('SUPERVISE_VERSION')})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
