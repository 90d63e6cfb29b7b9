"""Registration storm against ejabberd: N agents (real XMPP connections, in swarm
processes) connect and enrol at once.

Per run, in one invocation: (0) N fresh accounts are created by in-band registration;
(1) ceiling: the same N accounts log in and send their initial presence with no master
running (ejabberd's bare login rate); (2) ours: the master starts on an empty store and
the same N agents log in and enrol (assess + register); (3) K agents' TCP connections are
reset and we time until the master records them offline, against the time ejabberd
itself takes to see each session closed (its log); (4) the master's VmRSS with no machine
and with N. Rows: xmpp.registration_storm, xmpp.offline_detection,
master.rss_per_machine (results/registration_storm.json).

Everything shares the machine's 2 cores: the swarms (the agents' client-side TLS, SCRAM
and XML, which real workstations each do on their own CPU) take about 40% of it, so the
absolute rates are a floor; the ratio to the bare login rate of the same run is the
figure to compare. Each params field records the CPU seconds of swarms, ejabberd and
master per phase, and the machine's load before the run (other users skew results).
Defaults are the configuration README.Debian recommends for a fleet: master admission
200/s, ejabberd's idle schedulers sleeping (+sbwt none) and its roster table in RAM
(disc_copies); --ejabberd-stock runs ejabberd as Debian ships it (busy-waiting
schedulers, roster in DETS: about a third of the rate, all of it ejabberd's CPU).
--start-rate and --master-keepalive-timeout are tuning experiments.
"""

import argparse
import datetime
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

from medulla_appliance.testing.appliance import Appliance  # noqa: E402
from medulla_appliance.testing.ejabberd import EjabberdServer  # noqa: E402
from medulla_appliance.testing.pki import CertificateAuthority  # noqa: E402
from medulla_appliance.testing.processes import as_user  # noqa: E402
from medulla_appliance.testing.xmppserver import make_server  # noqa: E402

NAME = "registration_storm"
DOMAIN = "medulla.bench"
TARGET_AGENTS, TARGET_SECONDS = 5000, 60.0
STORM_RATIO_TARGET = 0.5       # ours/ejabberd bare login: the bar we hold ourselves to
OFFLINE_TARGET_S = 2.0         # the absolute bar
OFFLINE_RATIO_TARGET = 0.5     # master within twice the server's own detection time
RSS_TARGET_KIB = 20.0
MIN_WAIT_S = 120.0             # how long a phase may take, at least ...
WAIT_PER_AGENT_S = 0.06        # ... and per agent beyond that
OFFLINE_WAIT_S = 30.0
# In-band registrations all at once collapse (30 s IQ timeouts, retries): they are paced.
ACCOUNTS_RATE = 100.0
LOG_FLUSH_WAIT_S = 15.0


class NoBusyWaitEjabberd(EjabberdServer):
    """ejabberd whose idle Erlang schedulers sleep instead of spinning (+sbwt none).

    On 2 cores shared with the master and the swarms, spinning schedulers take CPU the
    others need: the bench measured ejabberd using 3x the CPU for the same logins when
    they were paced rather than all at once.
    """

    def _write_config(self, cert_path, key_path):
        super()._write_config(cert_path, key_path)
        path = self.config_dir / "ejabberdctl.cfg"
        path.write_text(path.read_text().replace(
            'ERL_OPTIONS="', 'ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none ', 1))


def erlang_rpc(server, call):
    """Run `Module, Function, [Args]` on the ejabberd node (through `ejabberdctl debug`)."""
    node = server.node
    call = call.replace("node()", "'%s'" % node)
    expression = ("io:format(\"RPC ~p~n\", [rpc:call('%s', erlang, apply, [fun() -> "
                  "apply(%s) end, []])]).\nhalt().\n" % (node, call))
    result = subprocess.run(
        as_user(server._ctl_argv("debug"), server.run_as), cwd=server.root,
        env=server._environment(), input=expression, capture_output=True, text=True,
        timeout=60, check=False)
    lines = [line for line in result.stdout.splitlines() if "RPC " in line]
    return lines[-1].split("RPC ", 1)[1] if lines else result.stdout[-300:]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__)
    parser.add_argument("--agents", type=int, default=TARGET_AGENTS)
    parser.add_argument("--runs", type=int, default=2, help="runs (median reported)")
    parser.add_argument("--procs", type=int, default=2, help="swarm processes per side")
    parser.add_argument("--reset", type=int, default=50, help="agents reset for offline")
    parser.add_argument("--admission", type=int, default=200,
                        help="[registry] max_registrations_per_second of the master")
    parser.add_argument("--start-rate", type=float, default=0.0,
                        help="agents started per second by each swarm (0: all at once)")
    parser.add_argument("--accounts-rate", type=float, default=ACCOUNTS_RATE,
                        help="accounts created per second in all (0: all at once)")
    parser.add_argument("--master-keepalive-timeout",
                        help="[xmpp] keepalive_timeout of the master (default: its own)")
    parser.add_argument("--ejabberd-stock", action="store_true",
                        help="ejabberd as Debian ships it: busy-waiting schedulers and the "
                             "roster in DETS (default: +sbwt none, roster as disc_copies)")
    parser.add_argument("--workdir", help="keep everything here (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medulla-bench-storm-"))
    work.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(work / "ca")
    server = (make_server("ejabberd", work / "xmpp", DOMAIN, ca) if args.ejabberd_stock
              else NoBusyWaitEjabberd(work / "xmpp", DOMAIN, ca))
    server.start()
    if not args.ejabberd_stock:
        log("roster table: %s" % erlang_rpc(
            server, "mnesia, change_table_copy_type, [roster, node(), disc_copies]"))
    runs = []
    try:
        app = Appliance(work / "app", server, log_level="INFO",
                        registry={"max_registrations_per_second": args.admission})
        if args.master_keepalive_timeout:  # an override, as an admin would write it
            Path(str(app.config_path) + ".local").write_text(
                "[xmpp]\nkeepalive_timeout = %s\n" % args.master_keepalive_timeout)
        for r in range(args.runs):
            runs.append(one_run(args, app, server, work, r))
            log("run %d: %s" % (r, {k: v for k, v in runs[-1].items() if k != "detail"}))
    finally:
        server.close()
    rows = make_rows(args, runs)
    for item in rows:
        log("%s: ours %s %s, anchor %s %s, ratio %s" % (
            item["metric"], item["ours"], item["unit"], item["anchor"],
            item["anchor_value"], item["ratio"]))
    if not args.no_write:
        log("wrote %s" % h.write_results(NAME, rows))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def log(text):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
    sys.stderr.flush()


def one_run(args, app, server, work, r):
    """Accounts, ceiling, ours, offline detection and RSS for one fresh set of agents."""
    n, prefix = args.agents, "r%d" % r
    config = app.agent_config("swarm-%d" % r, log_level="WARNING")
    options = ["--no-fsync"] + (["--start-rate", str(args.start_rate)] if args.start_rate
                                else [])
    run_dir = work / ("run-%d" % r)
    run_dir.mkdir(exist_ok=True)
    beam = server.pid
    out = {"background_busy_pct": background_load()}

    # (0) accounts, by in-band registration as real agents create theirs.
    paced = (["--no-fsync", "--start-rate", str(args.accounts_rate / args.procs)]
             if args.accounts_rate else options)
    t = timed_login(config, n, args.procs, run_dir, "accounts", prefix, paced, beam)
    out["accounts_per_s"] = t["rate"]
    log("run %d: %d accounts created, %.1f/s" % (r, t["done"], t["rate"]))

    # (1) ceiling: the same accounts log in and send presence; no master.
    ceiling = timed_login(config, n, args.procs, run_dir, "ceiling", prefix, options, beam)
    out.update(login_per_s=ceiling["rate"], login_p50_s=ceiling["p50"],
               login_p99_s=ceiling["p99"], login_done=ceiling["done"],
               login_cpu=ceiling["cpu"])
    log("run %d: ceiling %d logins, %.1f/s" % (r, ceiling["done"], ceiling["rate"]))

    # (2) ours: a master on an empty store; the same agents log in and enrol.
    store = app.state / "master.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(store) + suffix).unlink(missing_ok=True)
    master = app.start_master()
    wait_master_connected(app)
    h.wait_quiet([master.pid, beam], timeout=20)
    rss0 = h.rss_kib(master.pid)
    swarms = h.start_swarms(config, n, args.procs, run_dir, "ours", prefix=prefix,
                            options=options + ["--reset-count", str(args.reset)])
    meter = h.CpuMeter({"swarms": lambda: [s.pid for s in swarms], "ejabberd": beam,
                        "master": master.pid}).start()
    done = h.wait_events(swarms, "registered", n, MIN_WAIT_S + WAIT_PER_AGENT_S * n)
    cpu = meter.stop()
    ours = storm_figures(store, list(h.all_records(swarms, "start")), done, n)
    ours["cpu"] = cpu
    out.update(ours)
    log("run %d: ours %d registered, %.1f/s in %.1f s; p50 %.2f s p99 %.2f s" % (
        r, ours["registered"], ours["rate"], ours["total_s"], ours["p50"], ours["p99"]))

    # (4) RSS with N machines, once the storm has settled.
    h.wait_quiet([master.pid, beam], timeout=30)
    rss_n = h.rss_kib(master.pid)
    out.update(rss0_kib=rss0, rssn_kib=rss_n,
               rss_per_machine_kib=round((rss_n - rss0) / max(1, ours["registered"]), 2))

    # (3) offline detection after a TCP reset of K agents.
    out.update(offline_figures(swarms[0], store, server, args.reset))
    log("run %d: offline p50 %s s (ejabberd %s s)" % (r, out["offline_p50"],
                                                     out["server_close_p50"]))
    for swarm in swarms:
        swarm.stop()
    app.stop_master()
    h.wait_quiet([beam], timeout=30)
    return out


def timed_login(config, n, procs, run_dir, tag, prefix, options, beam):
    """N agents log in (creating their accounts if needed) and send presence."""
    swarms = h.start_swarms(config, n, procs, run_dir, tag, prefix=prefix,
                            options=options + ["--login-only"])
    meter = h.CpuMeter({"swarms": lambda: [s.pid for s in swarms], "ejabberd": beam}).start()
    try:
        online = h.wait_events(swarms, "online", n, MIN_WAIT_S + WAIT_PER_AGENT_S * n)
        cpu = meter.stop()
        starts = {rec["i"]: rec["t"] for rec in h.all_records(swarms, "start")}
    finally:
        for swarm in swarms:
            swarm.stop()
    h.wait_quiet([beam], timeout=30)  # ejabberd closing the sessions
    latencies = [online[i] - starts[i] for i in online]
    total = max(online.values()) - min(starts.values()) if online else float("inf")
    return {"done": len(online), "rate": round(len(online) / total, 1),
            "p50": round(h.percentile(latencies, 50), 3) if latencies else None,
            "p99": round(h.percentile(latencies, 99), 3) if latencies else None,
            "total_s": round(total, 2), "cpu": cpu}


def background_load(seconds=2.0):
    """% of the machine busy while nothing of ours runs: other users' load skews results."""
    before = h.machine_busy()
    time.sleep(seconds)
    after = h.machine_busy()
    return round(100 * (after[0] - before[0]) / max(1, after[1] - before[1]), 1)


def wait_master_connected(app, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.api("/api/v1/status")["xmpp"]["connected"]:
            return
        time.sleep(0.1)
    raise RuntimeError("the master did not connect to ejabberd in %ss" % timeout)


def master_events(store, event):
    """{hostname: [ts, ...]} of the master's history events of kind `event`."""
    conn = sqlite3.connect("file:%s?mode=ro" % store, uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT m.hostname, e.ts FROM machine_events e JOIN machines m "
                            "ON m.uuid = e.uuid WHERE e.event = ?", (event,)).fetchall()
    finally:
        conn.close()
    found = {}
    for host, ts in rows:
        found.setdefault(host, []).append(ts)
    return found


def storm_figures(store, starts, agent_done, n):
    """Rate and per-agent latency from connect start to the master's "registered"."""
    start_by_host = {rec["host"]: rec["t"] for rec in starts}
    registered = {host: min(ts) for host, ts in master_events(store, "registered").items()}
    latencies = [registered[host] - t for host, t in start_by_host.items() if host in registered]
    agent_side = {rec["i"]: rec["t"] for rec in starts}
    agent_lat = [agent_done[i] - agent_side[i] for i in agent_done if i in agent_side]
    first = min(start_by_host.values())
    total = (max(registered.values()) - first) if registered else float("inf")
    return {"registered": len(registered), "rate": round(len(registered) / total, 1),
            "total_s": round(total, 2),
            "p50": round(h.percentile(latencies, 50), 3) if latencies else None,
            "p99": round(h.percentile(latencies, 99), 3) if latencies else None,
            "agent_p50": round(h.percentile(agent_lat, 50), 3) if agent_lat else None,
            "agent_p99": round(h.percentile(agent_lat, 99), 3) if agent_lat else None,
            "all_under_60s": len(registered) >= n and total < TARGET_SECONDS}


def server_close_times(server, since):
    """{full JID: first time ejabberd logged "Closing c2s session" at or after since[JID]}."""
    found = {}
    marker = "Closing c2s session for "
    for line in server.log_path.read_text(errors="replace").splitlines():
        at = line.find(marker)
        if at < 0:
            continue
        jid = line[at + len(marker):].split(":", 1)[0]
        if jid in since:
            stamp = datetime.datetime.fromisoformat(" ".join(line.split(" ", 2)[:2])).timestamp()
            if stamp >= since[jid] and jid not in found:
                found[jid] = stamp
    return found


def offline_figures(swarm, store, server, k):
    """SIGUSR1 to one swarm: K resets; time until the master and ejabberd see each."""
    before = len(list(h.all_records([swarm], "reset")))
    swarm.signal()
    deadline = time.monotonic() + OFFLINE_WAIT_S
    resets, offline = {}, {}
    while time.monotonic() < deadline:
        resets = {r["host"]: r for r in list(h.all_records([swarm], "reset"))[before:]}
        if len(resets) >= k:
            events = master_events(store, "offline")
            offline = {host: min(t for t in events.get(host, []) if t >= rec["t"])
                       for host, rec in resets.items()
                       if any(t >= rec["t"] for t in events.get(host, []))}
            if len(offline) >= len(resets):
                break
        time.sleep(0.1)
    master_lat = [offline[host] - resets[host]["t"] for host in offline]
    since = {r["jid"]: r["t"] for r in resets.values()}
    closed = {}
    deadline = time.monotonic() + LOG_FLUSH_WAIT_S  # ejabberd writes its log lazily
    while len(closed) < len(since) and time.monotonic() < deadline:
        time.sleep(0.5)
        closed = server_close_times(server, since)
    server_lat = [closed[r["jid"]] - r["t"] for r in resets.values() if r["jid"] in closed]

    def q(values, p):
        return round(h.percentile(values, p), 4) if values else None

    return {"offline_reset": len(resets), "offline_seen": len(offline),
            "offline_p50": q(master_lat, 50), "offline_p99": q(master_lat, 99),
            "offline_max": round(max(master_lat), 4) if master_lat else None,
            "server_close_seen": len(server_lat), "server_close_p50": q(server_lat, 50),
            "server_close_p99": q(server_lat, 99)}


def make_rows(args, runs):
    med = {key: h.median([run.get(key) for run in runs])
           for key in runs[0] if not isinstance(runs[0][key], dict)} if runs else {}
    last = runs[-1] if runs else {}
    common = {"agents": args.agents,
              "master_keepalive_timeout": args.master_keepalive_timeout or "default (10s)",
              "ejabberd_sbwt": "default" if args.ejabberd_stock else "none",
              "ejabberd_roster": "default (DETS)" if args.ejabberd_stock else "disc_copies",
              "runs": len(runs), "swarm_procs": args.procs,
              "admission_per_s": args.admission, "start_rate": args.start_rate,
              "server": "ejabberd 23.01", "rtt_us": 0}
    ours, login = med.get("rate"), med.get("login_per_s")
    storm = h.row(
        "xmpp.registration_storm", "registrations/s", ours, "ejabberd bare login", login,
        round(ours / login, 3) if ours and login else None, STORM_RATIO_TARGET, True,
        {**common, "p50_s": med.get("p50"), "p99_s": med.get("p99"),
         "agent_side_p50_s": med.get("agent_p50"), "agent_side_p99_s": med.get("agent_p99"),
         "registered": med.get("registered"), "total_s": med.get("total_s"),
         "all_5000_under_60s": bool(args.agents >= TARGET_AGENTS and last.get("all_under_60s")),
         "login_p50_s": med.get("login_p50_s"), "login_p99_s": med.get("login_p99_s"),
         "accounts_created_per_s": med.get("accounts_per_s"),
         "background_busy_pct": med.get("background_busy_pct"),
         "cpu_ours": last.get("cpu"), "cpu_ceiling": last.get("login_cpu")})
    off, srv = med.get("offline_p50"), med.get("server_close_p50")
    offline = h.row(
        "xmpp.offline_detection", "s", off, "ejabberd own session close (its log)", srv,
        round(srv / off, 3) if off and srv else None, OFFLINE_RATIO_TARGET, False,
        {**common, "reset_agents": args.reset, "seen": med.get("offline_seen"),
         "p99_s": med.get("offline_p99"), "max_s": med.get("offline_max"),
         "ejabberd_p99_s": med.get("server_close_p99"),
         "target_s": OFFLINE_TARGET_S,
         "under_target": off is not None and (med.get("offline_max") or 0) < OFFLINE_TARGET_S,
         "cause": "TCP RST (SO_LINGER 0) of logged-in, enrolled agents"})
    per = med.get("rss_per_machine_kib")
    rss = h.row(
        "master.rss_per_machine", "KiB", per, "target", RSS_TARGET_KIB,
        round(RSS_TARGET_KIB / per, 3) if per else None, RSS_TARGET_KIB, False,
        {**common, "rss_empty_kib": med.get("rss0_kib"), "rss_with_n_kib": med.get("rssn_kib"),
         "machines": med.get("registered")})
    return [storm, offline, rss]


if __name__ == "__main__":
    sys.exit(main())
