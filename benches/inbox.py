#!/usr/bin/env python3
"""Notification-center timings for BENCHMARKS.md (issue 18), against the release binary.

    cargo build --release --bin herald && python3 benches/inbox.py [N] [--postgres]

Starts `target/release/herald` on a free loopback port with a fresh SQLite database,
sends N (default 10,000) targeted messages to one user, then times, through the REST API:
`GET /api/v1/inbox/counts`, mark-all-read, mark-all-unread and mark-all-read again (each
one call changing N entries), and a cursor page of 50. One JSON line per run is printed
and appended to benches/results/<date>-inbox.jsonl. Standard library only; loopback only.
"""

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
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
SECRET = "bench-secret-0123456789abcdef0123456789"


def token(user: str) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def call(base, method, path, auth, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {auth}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read() or b"null")


def timed(f):
    t = time.perf_counter()
    out = f()
    return (time.perf_counter() - t) * 1000, out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    postgres = "--postgres" in sys.argv
    n = int(args[0]) if args else 10_000
    binary = ROOT / "target/release/herald"
    if not binary.exists():
        sys.exit("build it first: cargo build --release --bin herald")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    db = f"herald_inbox_bench_{os.getpid()}"
    with tempfile.TemporaryDirectory() as d:
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
                    call(base, "GET", "/readyz", KEY)
                    break
                except Exception:
                    if time.time() > deadline:
                        sys.exit("herald did not become ready")
                    time.sleep(0.05)
            send = {"title": "Report ready", "content": "{\"reportId\":7}", "receivers": ["alice"]}
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda _: call(base, "POST", "/api/v1/messages", KEY, send)[0], range(n)))
            send_s = time.perf_counter() - t0
            assert all(s == 202 for s in statuses), "a send was refused"
            user = token("alice")
            counts_ms, (_, counts) = timed(lambda: call(base, "GET", "/api/v1/inbox/counts", user))
            assert counts == {"unseen": n, "unread": n, "total": n}, counts
            page_ms, (_, page) = timed(lambda: call(base, "GET", "/api/v1/inbox?status=all&limit=50", user))
            assert len(page["items"]) == 50
            runs = {}
            for name, op in [("read_all", "read"), ("unread_all", "unread"), ("read_all_again", "read")]:
                ms, (_, out) = timed(lambda: call(base, "POST", f"/api/v1/inbox/{op}", user, {"all": True}))
                assert out["changed"] == n, out
                runs[name + "_ms"] = round(ms, 1)
            counts_after_ms, _ = timed(lambda: call(base, "GET", "/api/v1/inbox/counts", user))
            line = {
                "scenario": "inbox",
                "database": "postgres" if postgres else "sqlite",
                "entries": n,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "sends_per_s": round(n / send_s),
                "counts_ms": round(counts_ms, 2),
                "counts_after_ms": round(counts_after_ms, 2),
                "cursor_page_50_ms": round(page_ms, 2),
                **runs,
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if postgres:
                subprocess.run(psql + [f"DROP DATABASE IF EXISTS {db}"], check=False)
    print(json.dumps(line))
    out = ROOT / "benches/results" / f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H%M}-inbox.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
