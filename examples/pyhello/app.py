"""pyhello: the example Python service for the systemd method.

It needs a package from requirements.txt (installed into the release's
virtualenv from the shipped wheelhouse), so a deploy that skipped the venv
would fail to start.
"""
import http.server
import json
import os

import greeting  # from requirements.txt

VERSION = open("VERSION").read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = 200, json.dumps({"status": "healthy", "version": VERSION})
        elif self.path == "/version":
            code, body = 200, VERSION
        elif self.path == "/greeting":
            code, body = 200, greeting.hello()
        elif self.path.startswith("/env/"):
            value = os.environ.get(self.path[5:])
            code, body = (200, value) if value is not None else (404, "")
        else:
            code, body = 404, "not found"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


port = int(os.environ["PORT"])
print(f"pyhello {VERSION} listening on port {port}", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
