#!/usr/bin/env python3
"""dbfork serve benchmark: how long a test waits for its database.

    cargo build --release
    .venv/bin/python bench/serve.py                         # SQLite, 5 s per case
    .venv/bin/python bench/serve.py --pg postgres://postgres@127.0.0.1:5432/postgres \\
        --mysql mysql://root@127.0.0.1:3306/mysql --seconds 5

Lease latency: one service per backend, a template of one table, a warm pool
(--pool-size 40); N client processes (1, 8, 32), each on one keep-alive
connection over the Unix socket or TCP, loop: GET .../tests (the lease: timed),
POST .../tests/ID/unlock (the clone is clean and goes back ready). Reported: p50,
p95, p99 of the lease in milliseconds, and leases per second in all. Beside it,
IntegreSQL's published figure for a test database from a warm pool (its README:
p95 0.08-0.09 ms; measured on other hardware, not in this run).

Sustained clones per second: 4 clients lease and have every clone recreated
(POST .../recreate: dropped and made afresh), so the pool makes clones as fast as
the backend allows; reported from the service's /metrics
(dbfork_serve_clone_seconds_count over the run) and the lease p50/p95 then.

The machine is noisy: every figure is one run of --seconds per case; rerun to
see the spread. Results: a Markdown table on stdout, raw JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DBFORK = ROOT / "target" / "release" / "dbfork"
INTEGRESQL_P95_MS = "0.08-0.09"


class Conn:
    """One keep-alive HTTP/1.1 connection, minimal parsing."""

    def __init__(self, address: str):
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(address[5:])
        else:
            host, port = address[len("http://"):].rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data


def client(address: str, hash_: str, seconds: float, how: str, out) -> None:
    conn = Conn(address)
    waits = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        status, data = conn.call("GET", f"/api/v1/templates/{hash_}/tests")
        waits.append(time.perf_counter() - t0)
        assert status == 200, data
        test_id = json.loads(data)["id"]
        status, _ = conn.call("POST", f"/api/v1/templates/{hash_}/tests/{test_id}/{how}")
        assert status == 204
    out.put(waits)


def start_service(db: str, workdir: Path, pool: int) -> tuple[subprocess.Popen, list[str]]:
    sock = workdir / "run" / "dbfork.sock"
    proc = subprocess.Popen(
        [str(DBFORK), "serve", "--db", db, "--listen", f"unix:{sock}", "--listen", "tcp:127.0.0.1:0",
         "--pool-size", str(pool), "--pool-max", "64", "--max-databases", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=workdir)
    addresses = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    return proc, addresses


def template(address: str, hash_: str, fill) -> None:
    conn = Conn(address)
    status, data = conn.call("POST", "/api/v1/templates", json.dumps({"hash": hash_}).encode())
    assert status == 200, data
    fill(json.loads(data)["database"])
    status, data = conn.call("PUT", f"/api/v1/templates/{hash_}")
    assert status == 204, data


def fill(database: dict) -> None:
    url = database["url"]
    sql = "CREATE TABLE item (id INT PRIMARY KEY, name VARCHAR(100))"
    if url.startswith("sqlite://"):
        import sqlite3
        db = sqlite3.connect(url[len("sqlite://"):])
        db.execute(sql)
        db.commit()
        db.close()
    elif url.startswith("postgres"):
        import psycopg
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql)
    else:
        import MySQLdb
        from urllib.parse import urlparse
        u = urlparse(url)
        db = MySQLdb.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                             passwd=u.password or "", db=u.path.lstrip("/"))
        db.cursor().execute(sql)
        db.close()


def metric(address: str, name: str) -> float:
    status, data = Conn(address).call("GET", "/metrics")
    match = re.search(rf"^{name} ([0-9.e+-]+)$", data.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def run_clients(address: str, hash_: str, n: int, seconds: float, how: str) -> list[float]:
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(address, hash_, seconds, how, out)) for _ in range(n)]
    for p in procs:
        p.start()
    waits = []
    for _ in procs:
        waits.extend(out.get())
    for p in procs:
        p.join()
    return waits


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def bench(name: str, db: str, seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, (unix, tcp) = start_service(db, Path(tmp), 40)
        try:
            template(tcp, "bench", fill)
            time.sleep(2)  # the pool fills
            for transport, address in (("unix", unix), ("tcp", tcp)):
                for n in (1, 8, 32):
                    waits = run_clients(address, "bench", n, seconds, "unlock")
                    rows.append({"backend": name, "case": "lease, warm pool", "transport": transport, "clients": n,
                                 "leases": len(waits), "per_s": len(waits) / seconds,
                                 "p50_ms": pct(waits, .5), "p95_ms": pct(waits, .95), "p99_ms": pct(waits, .99)})
            before = metric(tcp, "dbfork_serve_clone_seconds_count")
            waits = run_clients(unix, "bench", 4, seconds, "recreate")
            made = metric(tcp, "dbfork_serve_clone_seconds_count") - before
            rows.append({"backend": name, "case": "every clone recreated", "transport": "unix", "clients": 4,
                         "leases": len(waits), "per_s": len(waits) / seconds, "clones_per_s": made / seconds,
                         "p50_ms": pct(waits, .5), "p95_ms": pct(waits, .95), "p99_ms": pct(waits, .99)})
        finally:
            # The template goes too (the drain keeps templates); the server keeps
            # dbfork's empty registry: `dbfork clean --db URL` removes it.
            Conn(tcp).call("DELETE", "/api/v1/templates/bench")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", help="a PostgreSQL server URL (its maintenance database)")
    ap.add_argument("--mysql", help="a MySQL/MariaDB server URL")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if not DBFORK.exists():
        print("build first: cargo build --release", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench("SQLite", f"sqlite://{tmp}/db/main.sqlite3", args.seconds)
    if args.pg:
        rows += bench("PostgreSQL", args.pg, args.seconds)
    if args.mysql:
        rows += bench("MariaDB", args.mysql, args.seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"serve-{stamp}.json"
    out.write_text(json.dumps({"commit": commit, "cpus": os.cpu_count(), "python": platform.python_version(),
                               "seconds": args.seconds, "rows": rows}, indent=1) + "\n")
    print(f"raw results: {out.relative_to(ROOT)}")
    print(f"One run of {args.seconds:g} s per case; milliseconds. Commit {commit}, {os.cpu_count()} CPUs. "
          f"IntegreSQL's published p95 for a test database from a warm pool: {INTEGRESQL_P95_MS} ms (its README, other hardware).\n")
    print("| backend | case | transport | clients | leases/s | p50 | p95 | p99 | clones/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        clones = f"{r['clones_per_s']:.0f}" if "clones_per_s" in r else ""
        print(f"| {r['backend']} | {r['case']} | {r['transport']} | {r['clients']} | {r['per_s']:.0f} | "
              f"{r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {clones} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
