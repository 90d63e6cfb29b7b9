"""The real runner behind the step engine: processes through Twisted's process API, never
blocking the reactor.

Each step runs in a session of its own (started through util-linux `setsid`, which makes
the child a session and process-group leader before it execs), so a timeout can stop the
whole tree: SIGTERM to the group, SIGKILL `kill_grace` seconds later to whatever is left.
stdout and stderr share one pipe, so their lines keep the order they were written in; only
the last `max_output` bytes are kept. The environment is clean: PATH, LANG=C.UTF-8 and the
step's variables, nothing inherited from the agent.
"""

import os
import signal
import tempfile

from twisted.internet import defer, fdesc
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from .steps import KILL_GRACE, StepTimedOut

MAX_OUTPUT = 1024 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETSID = "/usr/bin/setsid"
REBOOT_COMMAND = ("systemctl", "reboot")
# --no-block: the restart stops this agent, and systemctl with it; the job must not wait.
RESTART_COMMAND = ("systemctl", "--no-block", "restart", "medulla-agent")
REQUEST_TIMEOUT = 120
DRAIN_GRACE = 2.0     # after the step's exit, output from its leftover background processes
GROUP_POLL = 0.1
KILL_WAIT = 5.0       # after SIGKILL, how long a process stuck in the kernel is waited for


class Runner:
    """Runs script and command steps in `cwd` (the package's download folder)."""

    log = Logger()

    def __init__(self, reactor, cwd, *, work_dir=None, reboot_command=REBOOT_COMMAND,
                 restart_command=RESTART_COMMAND, setsid=SETSID, kill_grace=KILL_GRACE,
                 max_output=MAX_OUTPUT, path=DEFAULT_PATH):
        self.reactor, self.cwd = reactor, cwd
        self.work_dir = work_dir or tempfile.gettempdir()
        self.reboot_command, self.restart_command = tuple(reboot_command), tuple(
            restart_command)
        self.setsid, self.kill_grace = setsid, kill_grace
        self.max_output, self.path = max_output, path

    def run_script(self, interpreter, body, env, timeout):
        """Deferred (exit_code, output): `interpreter <file holding body>`."""
        fd, script = tempfile.mkstemp(prefix="medulla-step-", dir=self.work_dir)
        try:
            os.fchmod(fd, 0o700)
            data = body.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

        def remove(result):
            try:
                os.unlink(script)
            except OSError:
                pass
            return result

        try:
            d = self._spawn([interpreter, script], env, timeout, self.cwd)
        except BaseException:
            remove(None)
            raise
        return d.addBoth(remove)

    def run_command(self, argv, env, timeout):
        """Deferred (exit_code, output): `argv` run directly, no shell."""
        return self._spawn(list(argv), env, timeout, self.cwd)

    def reboot(self):
        """Deferred (exit_code, output) of the reboot request."""
        return self._spawn(list(self.reboot_command), {}, REQUEST_TIMEOUT, "/")

    def restart_agent(self):
        """Deferred (exit_code, output) of the agent restart request."""
        return self._spawn(list(self.restart_command), {}, REQUEST_TIMEOUT, "/")

    def _spawn(self, argv, env, timeout, cwd):
        if not os.path.isdir(cwd):
            raise OSError("the step folder %s does not exist" % cwd)
        full_env = {"PATH": self.path, "LANG": "C.UTF-8"}
        full_env.update(env)
        run = _Run(self.reactor, timeout, self.kill_grace, self.max_output)
        return run.start([self.setsid, "--wait"] + argv, full_env, cwd)


@implementer(IReadDescriptor)
class _OutputReader:
    """The read end of the step's output pipe, watched by the reactor."""

    def __init__(self, reactor, fd, on_data, on_eof):
        self.reactor, self.fd, self.on_data, self.on_eof = reactor, fd, on_data, on_eof
        fdesc.setNonBlocking(fd)

    def fileno(self):
        return self.fd

    def doRead(self):
        return fdesc.readFromFD(self.fd, self.on_data)

    def connectionLost(self, reason):
        self.close()
        self.on_eof()

    def logPrefix(self):
        return "step-output"

    def close(self):
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1


class _Run(ProcessProtocol):
    """One process tree: its output, its timeout, its end."""

    log = Logger()

    def __init__(self, reactor, timeout, kill_grace, max_output):
        self.reactor, self.timeout = reactor, timeout
        self.kill_grace, self.max_output = kill_grace, max_output
        self.output = bytearray()
        self.done = defer.Deferred(self._cancelled)
        self.pgid = self.code = None
        self.exited = self.eof = self.drained = self.finished = False
        self.reader = None
        self.stopping = self.gave_up = False
        self._timer = self._kill_timer = self._drain_timer = self._poll_timer = None

    def start(self, argv, env, cwd):
        read_fd, write_fd = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            process = self.reactor.spawnProcess(self, argv[0], argv, env=env, path=cwd,
                                                usePTY=False,
                                                childFDs={0: null, 1: write_fd, 2: write_fd})
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            os.close(null)
        self.pgid = process.pid   # setsid made the child its group's leader
        self.reader = _OutputReader(self.reactor, read_fd, self._data, self._eof)
        self.reactor.addReader(self.reader)
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        return self.done

    # -- events -------------------------------------------------------------------------

    def _data(self, data):
        self.output += data
        if len(self.output) > 2 * self.max_output:
            del self.output[:-self.max_output]

    def _eof(self):
        self.eof = True
        self._check()

    def processEnded(self, reason):
        self.exited = True
        status = reason.value
        if status.exitCode is not None:
            self.code = status.exitCode
        else:
            self.code = 128 + (status.signal or 0)
        if not self.stopping:
            _cancel(self._timer)
        self._check()

    def _timed_out(self):
        self.log.warn("step process {pid} timed out after {timeout}s: stopping its group",
                      pid=self.pgid, timeout=self.timeout)
        self._stop()

    def _cancelled(self, d):
        # The engine gave up on this step (stop, watchdog): the tree must still go.
        self._stop()

    def _stop(self):
        if self.stopping:
            return
        self.stopping = True
        _cancel(self._timer)
        self._signal(signal.SIGTERM)
        self._kill_timer = self.reactor.callLater(self.kill_grace, self._kill)
        self._check()

    def _kill(self):
        self._signal(signal.SIGKILL)
        self._kill_timer = self.reactor.callLater(KILL_WAIT, self._give_up)
        self._check()

    def _give_up(self):
        self._kill_timer = None
        self.log.error("process group {pgid} still there {wait}s after SIGKILL",
                       pgid=self.pgid, wait=KILL_WAIT)
        self.gave_up = True
        self._check()

    def _signal(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            self.log.error("cannot signal process group {pgid}: {e}", pgid=self.pgid, e=e)

    # -- the end ------------------------------------------------------------------------

    def _check(self):
        """Finish once the process is gone, its group too if stopping, its output read."""
        _cancel(self._poll_timer)
        self._poll_timer = None
        if self.finished or not self.exited:
            return
        if self.stopping and not self.gave_up and _group_alive(self.pgid):
            self._poll_timer = self.reactor.callLater(GROUP_POLL, self._check)
            return
        if not self.eof and not self.drained:
            if self._drain_timer is None:
                self._drain_timer = self.reactor.callLater(DRAIN_GRACE, self._drain_over)
            return
        self._finish()

    def _drain_over(self):
        self.drained = True
        self._check()

    def _finish(self):
        self.finished = True      # later events change nothing
        for timer in (self._timer, self._kill_timer, self._drain_timer, self._poll_timer):
            _cancel(timer)
        self.reader.close()
        if self.done.called:
            return
        output = bytes(self.output[-self.max_output:])
        if self.stopping:
            self.done.errback(StepTimedOut(self.timeout, output))
        else:
            self.done.callback((self.code, output))


def _cancel(timer):
    if timer is not None and timer.active():
        timer.cancel()


def _group_alive(pgid):
    """True while a process of the group runs (zombies nobody reaped yet do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            group, state = int(fields[2]), fields[0]
        except (OSError, IndexError, ValueError):
            continue  # gone between listdir and read
        if group == pgid and state != b"Z":
            return True
    return False
