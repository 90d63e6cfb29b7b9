"""Package download throughput: medulla-relay against nginx serving the same file.

Both servers run on 127.0.0.1 in this invocation: medulla-relay as its daemon process
(asyncio reactor, token checked on every request) and nginx from Debian, started in the
foreground with its own configuration in a temp folder (``nginx -c FILE -g 'daemon off;'``,
sendfile on, access log off, ``worker_processes`` 1 by default: the relay is one
single-threaded process). For each client count N, N clients each download the whole
``--size-mib`` file at once; the aggregate MB/s is all bytes over the time from the first
connect to the last byte. Runs alternate between the servers (the order flips each run) and
the median is reported.

The load client is ours (``--client-procs`` processes of a selectors loop doing
``recv_into`` a 1 MiB buffer and throwing the bytes away): fewer system calls per byte than
curl or wrk (16 KiB and 8 KiB reads), so more of the CPU goes to the servers. Each file is
first downloaded once from each server and its SHA-256 checked. CPU seconds used by each
server and by the clients are recorded in ``params``.

Row: deploy.relay_throughput, one per client count (results/relay.json).
"""

import argparse
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _harness as h  # noqa: E402

from medulla_appliance.core import keys  # noqa: E402
from medulla_appliance.relay.harness import RelayProcess, token_for, write_package  # noqa: E402
from medulla_appliance.testing.ports import LOOPBACK, free_tcp_port  # noqa: E402
from medulla_appliance.testing.processes import raise_nofile  # noqa: E402

NAME = "relay"
METRIC = "deploy.relay_throughput"
TARGET = 0.8
PACKAGE = "bench-pkg"
FILE = "payload.bin"
RECV_BYTES = 1 << 20
MB = 1e6
CONNECT_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 900.0
NGINX_CONF = """\
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port};
        location /packages/ {{ alias {root}/; }}
    }}
}}
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__)
    parser.add_argument("--clients", default="50,500",
                        help="comma-separated client counts (default %(default)s)")
    parser.add_argument("--size-mib", type=float, default=50 / 1.048576,
                        help="file size in MiB (default: 50 MB)")
    parser.add_argument("--runs", type=int, default=5, help="runs per server (median)")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="load client processes (default %(default)s)")
    parser.add_argument("--nginx-workers", default="1",
                        help="nginx worker_processes (default %(default)s; 'auto' = cores)")
    parser.add_argument("--sendfile", choices=("yes", "no"), default="yes",
                        help="[http] sendfile of the relay (default %(default)s; 'no' measures "
                             "the copy path TLS uses)")
    parser.add_argument("--workdir", help="keep everything here (default: a temp folder)")
    return parser.parse_args(argv)


# -- the load client -----------------------------------------------------------------------

def _client_worker(port, request, count, expected, conn):
    """Download with ``count`` connections at once; send (bytes, errors, t_end) to ``conn``."""
    raise_nofile()
    selector = selectors.DefaultSelector()
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    state = {}
    errors = []
    for _ in range(count):
        sock = socket.create_connection((LOOPBACK, port), timeout=CONNECT_TIMEOUT_S)
        sock.setblocking(False)
        state[sock] = [b"", None]            # header bytes so far, body bytes left
        selector.register(sock, selectors.EVENT_READ)
    conn.send("connected")
    conn.recv()                              # go
    for sock in state:
        sock.sendall(request)
    total = 0
    open_count = count
    finished = []
    deadline = time.monotonic() + RUN_TIMEOUT_S

    def finish(sock, error=None):
        nonlocal open_count
        if error is not None:
            errors.append(error)
        else:
            finished.append(time.time())
        selector.unregister(sock)
        sock.close()
        open_count -= 1

    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            entry = state[sock]
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError as exc:
                finish(sock, str(exc))
                continue
            if n == 0:
                finish(sock, "closed after %d bytes" % total)
                continue
            if entry[1] is None:             # still in the headers
                entry[0] += bytes(view[:n])
                head, sep, body = entry[0].partition(b"\r\n\r\n")
                if not sep:
                    continue
                status = head.split(b"\r\n", 1)[0]
                length = _content_length(head)
                if status.split()[1:2] != [b"200"] or length != expected:
                    finish(sock, "unexpected answer %r (length %r)" % (status[:80], length))
                    continue
                entry[1] = length - len(body)
                total += len(body)
            else:
                entry[1] -= n
                total += n
            if entry[1] == 0:
                finish(sock)
    if open_count:
        errors.append("%d downloads unfinished after %.0f s" % (open_count, RUN_TIMEOUT_S))
    conn.send((total, errors[:5], time.time(), finished))


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def load(port, path, token, clients, procs, expected):
    """Aggregate MB/s of ``clients`` downloads of ``path`` at once, and client CPU seconds."""
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % (path, LOOPBACK, token)).encode()
    ctx = multiprocessing.get_context("fork")
    procs = max(1, min(procs, clients))
    workers, pipes = [], []
    for k in range(procs):
        count = clients // procs + (1 if k < clients % procs else 0)
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=_client_worker, args=(port, request, count, expected, child))
        worker.start()
        workers.append(worker)
        pipes.append(parent)
    for pipe in pipes:
        if pipe.recv() != "connected":
            raise RuntimeError("a client process failed to connect")
    meter = h.CpuMeter({"clients": lambda: [w.pid for w in workers]}).start()
    started = time.time()
    for pipe in pipes:
        pipe.send("go")
    results = [pipe.recv() for pipe in pipes]
    cpu = meter.stop()
    for worker in workers:
        worker.join(30)
    errors = [e for _, errs, _, _ in results for e in errs]
    if errors:
        raise RuntimeError("downloads failed: %s" % errors[:5])
    total = sum(r[0] for r in results)
    if total != expected * clients:
        raise RuntimeError("got %d bytes, expected %d" % (total, expected * clients))
    elapsed = max(r[2] for r in results) - started
    done = sorted(t - started for r in results for t in r[3])
    spread = {"first_s": round(done[0], 2), "median_s": round(h.median(done), 2),
              "last_s": round(done[-1], 2)}
    return total / elapsed / MB, elapsed, cpu["cpu_s"]["clients"], spread


# -- the servers ---------------------------------------------------------------------------

class Nginx:
    """Debian's nginx in the foreground with a config of ours; stopped by its PID."""

    def __init__(self, folder, root, workers):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.conf = self.folder / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(workers=workers, tmp=self.folder, host=LOOPBACK,
                                               port=self.port, root=root))
        self.process = None

    def start(self):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        with open(self.folder / "nginx.out", "ab") as out:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.folder), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("nginx exited: %s" % (self.folder / "nginx.out").read_text())
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    def pids(self):
        # The master and its workers (its children).
        from medulla_appliance.testing.processes import process_tree
        return process_tree(self.process.pid) if self.process else []

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)    # nginx: fast shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def check_once(port, path, token, sha256, folder):
    """Download the file once with curl and compare its SHA-256 (fails loudly)."""
    out = Path(folder) / "check.bin"
    subprocess.run(["curl", "-sSf", "-H", "Authorization: Bearer %s" % token, "-o", str(out),
                    "http://%s:%d%s" % (LOOPBACK, port, path)], check=True, timeout=300)
    got = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    out.unlink()
    if got != sha256:
        raise RuntimeError("checksum mismatch from port %d" % port)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        sys.stderr.write("%s: nginx is not installed (scripts/install-deps)\n" % NAME)
        return 1
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    size = int(args.size_mib * (1 << 20))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-relay-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)                    # nginx workers run as nobody
    master = keys.generate_private_key()
    root = work / "packages"
    descriptor = write_package(root, PACKAGE, {FILE: size})
    for folder in (root, root / PACKAGE):
        os.chmod(folder, 0o755)
    os.chmod(root / PACKAGE / FILE, 0o644)
    sha256 = descriptor["files"][0]["sha256"]
    path = "/packages/%s/%s" % (PACKAGE, FILE)
    token = token_for(master, PACKAGE, ttl=24 * 3600)
    relay = RelayProcess(work / "relay", root, master.public_key(),
                         max_downloads=100000, per_client=10000, idle_timeout="600s",
                         sendfile=args.sendfile == "yes")
    nginx = Nginx(work / "nginx", root, args.nginx_workers)
    results = {("ours", n): [] for n in counts} | {("nginx", n): [] for n in counts}
    cpu = {key: [] for key in results}
    rows = []
    try:
        relay.start()
        nginx.start()
        servers = {"ours": (relay.port, lambda: [relay.pid]), "nginx": (nginx.port, nginx.pids)}
        for port, _ in servers.values():
            check_once(port, path, token, sha256, work)
        for run in range(args.runs):
            for n in counts:
                order = ("ours", "nginx") if run % 2 == 0 else ("nginx", "ours")
                for name in order:
                    port, pids = servers[name]
                    h.wait_quiet(pids(), timeout=10)
                    meter = h.CpuMeter({"server": pids}).start()
                    rate, elapsed, client_cpu, spread = load(port, path, token, n,
                                                             args.client_procs, size)
                    used = meter.stop()
                    results[name, n].append(rate)
                    cpu[name, n].append((used["cpu_s"]["server"], client_cpu, elapsed))
                    sys.stderr.write("%s: run %d, %d clients, %s: %.0f MB/s (%.1f s; server "
                                     "%.1f CPU s, clients %.1f CPU s; downloads done at "
                                     "%s)\n" % (NAME, run + 1, n, name, rate, elapsed,
                                                 used["cpu_s"]["server"], client_cpu, spread))
    finally:
        relay.stop()
        nginx.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for n in counts:
        ours, anchor = h.median(results["ours", n]), h.median(results["nginx", n])
        params = {"clients": n, "size_mb": round(size / MB, 1), "runs": args.runs,
                  "rtt_us": 0, "sendfile": args.sendfile, "nginx_workers": args.nginx_workers,
                  "client_procs": args.client_procs,
                  "runs_ours_mb_s": [round(v) for v in results["ours", n]],
                  "runs_nginx_mb_s": [round(v) for v in results["nginx", n]],
                  "cpu_s_per_gb_ours": _cpu_per_gb(cpu["ours", n], size * n),
                  "cpu_s_per_gb_nginx": _cpu_per_gb(cpu["nginx", n], size * n)}
        rows.append(h.row(METRIC, "MB/s", round(ours, 1), "nginx", round(anchor, 1),
                          round(ours / anchor, 3), TARGET, True, params))
    path_written = h.write_results(NAME, rows)
    sys.stderr.write("%s: wrote %s\n" % (NAME, path_written))
    return 0


def _cpu_per_gb(samples, total_bytes):
    """Median server CPU seconds per GB moved."""
    return round(h.median([s[0] / (total_bytes / 1e9) for s in samples]), 3)


if __name__ == "__main__":
    sys.exit(main())
