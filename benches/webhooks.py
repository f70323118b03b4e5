#!/usr/bin/env python3
"""Webhook event throughput for BENCHMARKS.md (issue 19), against the release binary.

    cargo build --release --bin herald && python3 benches/webhooks.py [MESSAGES] [RECEIVERS] [--postgres] [--events=a,b]

Starts `target/release/herald` on a free loopback port with a fresh database and an e-mail
instance `mail` whose receivers have no address, so every delivery is a status change
(`failed: no_address`) committed with its message. Two runs, side by side in one process
lifetime each:

* `baseline`: no webhook endpoint — what the send path costs without webhooks;
* `webhooks`: one endpoint for every event type (or those of `--events=`), on a local
  receiver (asyncio, keep-alive, answers 204 and checks the signature of one request in
  100 with the stdlib).

Each run sends MESSAGES (default 2,000) messages of RECEIVERS (default 10) receivers from 8
threads, then waits until the receiver has every event (one `message.accepted` and
RECEIVERS `delivery.failed` per message). It prints one JSON line per run and appends them
to benches/results/<date>-webhooks.jsonl: status changes committed per second, events
delivered per second (from the first send to the last event), and the event lag (receipt
minus the change's `timestamp`) at p50/p99. Standard library only; loopback only.
"""

import asyncio
import base64
import concurrent.futures
import datetime
import hashlib
import hmac
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
SECRET = "bench-secret-0123456789abcdef0123456789"
TOML = """
[channels.mail]
kind = "email.smtp"
host = "127.0.0.1"
port = 9
tls = "none"
from = "Herald <herald@example.test>"
"""


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read() or b"null")


class Receiver:
    """A minimal HTTP/1.1 keep-alive server on its own thread and event loop."""

    def __init__(self):
        self.events = []  # (receipt time, type, change timestamp ms)
        self.secret = None
        self.checked = 0
        self.lock = threading.Lock()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        await server.serve_forever()

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                now = time.time()
                ev = json.loads(body)
                ts = datetime.datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
                with self.lock:
                    self.events.append((now, ev["type"], ts))
                    sample = len(self.events) % 100 == 1
                if sample and self.secret:
                    key = base64.b64decode(self.secret.removeprefix("whsec_"))
                    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
                    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                    assert "v1," + mac in headers["webhook-signature"].split(" "), "bad signature"
                    self.checked += 1
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else None


def run(scenario, messages, receivers, postgres, events):
    binary = ROOT / "target/release/herald"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    db = f"herald_webhooks_bench_{os.getpid()}_{scenario}"
    rx = Receiver() if scenario == "webhooks" else None
    with tempfile.TemporaryDirectory() as d:
        pathlib.Path(d, "herald.toml").write_text(TOML)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        if postgres:
            subprocess.run(psql + [f"CREATE DATABASE {db}"], check=True)
            url = f"postgres://postgres@127.0.0.1:5432/{db}"
        else:
            url = f"sqlite://{d}/herald.db"
        env.update(
            HERALD_BIND=f"127.0.0.1:{port}",
            HERALD_DATABASE_URL=url,
            HERALD_API_KEY=KEY,
            HERALD_JWT_SECRET=SECRET,
            HERALD_LOG__FILTER="warn",
        )
        proc = subprocess.Popen([str(binary), "serve"], env=env, cwd=d)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    call(base, "GET", "/readyz")
                    break
                except Exception:
                    if time.time() > deadline:
                        sys.exit("herald did not become ready")
                    time.sleep(0.05)
            if rx:
                _, created = call(base, "POST", "/api/v1/webhooks",
                                  {"url": f"http://127.0.0.1:{rx.port}/hook", "events": events})
                rx.secret = created["secret"]
            body = {"title": "Report ready", "content": "c", "channels": ["mail"],
                    "receivers": [f"u{i}" for i in range(receivers)]}
            t0 = time.time()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: call(base, "POST", "/api/v1/messages", body)[0], range(messages)))
            send_s = time.time() - t0
            assert all(s == 202 for s in statuses), "a send was refused"
            line = {
                "scenario": scenario,
                "database": "postgres" if postgres else "sqlite",
                "messages": messages,
                "receivers": receivers,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "sends_per_s": round(messages / send_s),
                "status_changes_per_s": round(messages * receivers / send_s),
            }
            if rx:
                line["subscribed"] = events
            if rx:
                per_message = (("*" in events or "message.accepted" in events)
                               + receivers * ("*" in events or "delivery.failed" in events))
                want = messages * per_message
                deadline = time.time() + 600
                while len(rx.events) < want:
                    if time.time() > deadline:
                        sys.exit(f"only {len(rx.events)} of {want} events within 10 minutes")
                    time.sleep(0.05)
                with rx.lock:
                    events = list(rx.events)
                last = max(e[0] for e in events)
                lags = [(e[0] - e[2]) * 1000 for e in events]
                line.update(
                    events=len(events),
                    events_per_s=round(len(events) / (last - t0)),
                    drained_after_sends_s=round(last - t0 - send_s, 2),
                    lag_p50_ms=round(percentile(lags, 0.5), 1),
                    lag_p99_ms=round(percentile(lags, 0.99), 1),
                    signatures_checked=rx.checked,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            if postgres:
                subprocess.run(psql + [f"DROP DATABASE IF EXISTS {db}"], check=False)
    return line


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    postgres = "--postgres" in sys.argv
    messages = int(args[0]) if len(args) > 0 else 2000
    receivers = int(args[1]) if len(args) > 1 else 10
    if not (ROOT / "target/release/herald").exists():
        sys.exit("build it first: cargo build --release --bin herald")
    out = ROOT / "benches/results" / f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H%M}-webhooks.jsonl"
    out.parent.mkdir(exist_ok=True)
    events = ["*"]
    for a in sys.argv[1:]:
        if a.startswith("--events="):
            events = a.split("=", 1)[1].split(",")
    for scenario in ["baseline", "webhooks"]:
        line = run(scenario, messages, receivers, postgres, events)
        print(json.dumps(line), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
