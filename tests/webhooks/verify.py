"""Receive Herald's webhook requests and verify each one three ways: the Python and the
JavaScript snippets of docs/webhooks.md §3 (taken from the document, run as written) and the
official `standardwebhooks` library. Run by verify.sh: verify.py BASE_URL API_KEY DOC."""

import base64
import hashlib
import hmac
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

base, api_key, doc_path = sys.argv[1:4]
doc = open(doc_path, encoding="utf-8").read()
PY = re.search(r"<!-- verify:python -->\n```python\n(.*?)```", doc, re.S).group(1)
JS = re.search(r"<!-- verify:js -->\n```js\n(.*?)```", doc, re.S).group(1)
NODE = (
    'import crypto from "node:crypto";\n'
    'const input = JSON.parse(require_stdin());\n'
).replace("require_stdin()", 'await new Promise(r => { let d = ""; process.stdin.on("data", c => d += c); process.stdin.on("end", () => r(d)); })')
NODE += (
    "const secret = input.secret, headers = input.headers;\n"
    'const body = Buffer.from(input.body, "base64");\n' + JS + "\nconsole.log(JSON.stringify(valid));\n"
)

requests = queue.Queue()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        requests.put(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
receiver = f"http://127.0.0.1:{server.server_address[1]}/hook"


def api(method, path, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def by_python(secret, headers, body):
    ns = {"base64": base64, "hashlib": hashlib, "hmac": hmac, "secret": secret, "headers": headers, "body": body}
    exec(PY, ns)
    return ns["valid"]


def by_js(secret, headers, body):
    out = subprocess.run(
        ["node", "--input-type=module", "-e", NODE],
        input=json.dumps({"secret": secret, "headers": headers, "body": base64.b64encode(body).decode()}),
        capture_output=True, text=True, timeout=30, check=True,
    )
    return json.loads(out.stdout)


def by_library(secret, headers, body):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:
        return False


CHECKS = {"docs python": by_python, "docs js": by_js, "standardwebhooks": by_library}


def next_request():
    try:
        return requests.get(timeout=30)
    except queue.Empty:
        sys.exit("no webhook request within 30 s")


def expect(secret, headers, body, valid, what):
    for name, check in CHECKS.items():
        got = check(secret, headers, body)
        assert got is valid, f"{what}: {name} says {got}, expected {valid}"


created = api("POST", "/api/v1/webhooks", {"url": receiver, "events": ["message.accepted"]})
old = created["secret"]
api("POST", "/api/v1/messages", {"title": "t", "content": "c", "receivers": ["u"]})
headers, body = next_request()
assert json.loads(body)["type"] == "message.accepted"
expect(old, headers, body, True, "signed request")
expect(old, headers, body + b" ", False, "tampered body")
expect("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, body, False, "wrong secret")

new = api("POST", f"/api/v1/webhooks/{created['id']}/rotate", {"overlap": "1h"})["secret"]
api("POST", "/api/v1/messages", {"title": "t", "content": "c", "receivers": ["u"]})
headers, body = next_request()
assert len(headers["webhook-signature"].split(" ")) == 2, headers
expect(old, headers, body, True, "rotation: the previous secret")
expect(new, headers, body, True, "rotation: the new secret")
print(f"webhooks verify: {len(CHECKS)} verifiers × 5 cases passed")
