"""How every daemon runs: arguments, config, logging, the asyncio reactor, sd_notify,
signals and reload. A daemon only supplies its schema and a function that builds its
service tree.

The service built may offer `when_ready()` (a Deferred fired once it really serves:
READY=1 waits for it), `status_line()` (STATUS=), and `reload(config)` (SIGHUP; it
returns False when it refused the new configuration, having logged why).
"""

import argparse
import os
import signal
import sys

from twisted.logger import Logger

from . import config as config_mod
from . import logs

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: systemd shows it as "CONFIG"
EXIT_STARTUP = 1
STATUS_EVERY_SECONDS = 10.0

log = Logger(namespace="medulla.runtime")


def install_asyncio_reactor():
    """Use the asyncio reactor, so asyncio libraries (pysnmp, dbus-next) share our loop."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor
    asyncioreactor.install()


class Notifier:
    """sd_notify(3) through sdnotify; does nothing when not started by systemd."""

    def __init__(self, environ=os.environ):
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            import sdnotify
            self._notifier = sdnotify.SystemdNotifier()
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() else None

    def notify(self, *lines):
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))


def parse_args(prog, description, default_config, argv):
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=default_config, metavar="PATH",
                        help="INI file (default %(default)s); PATH.local and the "
                             "PATH-without-.ini.d/*.ini files override it key by key")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print the result and exit")
    return parser.parse_args(argv)


def run_daemon(*, prog, description, default_config, schema, build, argv=None):
    """Parse arguments, load the config, run the service built by build(config, reactor).

    Returns the process exit code: 0, EXIT_CONFIG on a bad configuration (one line on
    stderr naming file, section, key and line) or EXIT_STARTUP if the service failed to
    start.
    """
    args = parse_args(prog, description, default_config, argv)
    try:
        cfg = config_mod.load(args.config, schema)
    except config_mod.ConfigError as e:
        sys.stderr.write("%s: bad configuration: %s\n" % (prog, e))
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write("%s: configuration OK (%s)\n" % (prog, ", ".join(cfg.files)))
        return 0
    level = logs.start_logging(cfg["global"]["log_level"])
    install_asyncio_reactor()
    from twisted.internet import reactor
    notifier = Notifier()
    outcome = {"code": 0}
    try:
        svc = build(cfg, reactor)
    except Exception as e:
        sys.stderr.write("%s: cannot start: %s\n" % (prog, e))
        return EXIT_STARTUP

    def started():
        try:
            svc.startService()
        except Exception as e:
            log.critical("cannot start: {error}", error=e)
            outcome["code"] = EXIT_STARTUP
            reactor.stop()
            return
        ready = svc.when_ready() if hasattr(svc, "when_ready") else None
        if ready is None:
            notifier.notify("READY=1", "STATUS=running")
        else:
            ready.addCallback(lambda _: notifier.notify("READY=1", "STATUS=" + _status(svc)))
            ready.addErrback(failed_to_start)

    def failed_to_start(failure):
        log.critical("cannot start: {error}", error=failure.getErrorMessage())
        outcome["code"] = EXIT_STARTUP
        if reactor.running:
            reactor.stop()

    def reload():
        if not hasattr(svc, "reload"):
            log.info("SIGHUP: nothing to reload")
            return
        notifier.notify("RELOADING=1")
        try:
            new = config_mod.load(args.config, schema)
        except config_mod.ConfigError as e:
            log.error("reload refused, keeping the running configuration: {error}", error=e)
        else:
            if svc.reload(new) is False:  # refused by the daemon, which said why
                log.warn("SIGHUP: {files} not applied, the running configuration goes on",
                         files=", ".join(new.files))
            else:
                logs.set_level(level, new["global"]["log_level"])
                log.info("configuration reloaded from {files}", files=", ".join(new.files))
        notifier.notify("READY=1", "STATUS=" + _status(svc))

    def tick():
        notifier.notify("WATCHDOG=1", "STATUS=" + _status(svc))

    from twisted.internet.task import LoopingCall
    ticker = LoopingCall(tick)
    ticker.clock = reactor
    reactor.callWhenRunning(started)
    reactor.callWhenRunning(
        ticker.start, notifier.watchdog_interval or STATUS_EVERY_SECONDS, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", _stopping, notifier, svc)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    reactor.run()
    return outcome["code"]


def _stopping(notifier, svc):
    notifier.notify("STOPPING=1")
    if svc.running:
        return svc.stopService()
    return None


def _status(svc):
    try:
        return svc.status_line() if hasattr(svc, "status_line") else "running"
    except Exception:
        return "running"
