"""The agent's real step runner against /bin/sh, on the real reactor (trial): exit codes,
output capture and bounding, timeouts that kill a whole process tree, a clean environment."""

import os
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from medulla_agent.runner import DEFAULT_PATH, DRAIN_GRACE, MAX_OUTPUT, Runner
from medulla_agent.steps import StepEngine, StepTimedOut
from medulla_appliance.packages.descriptor import parse_descriptor

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "packages", "native-hello")
GRACE = 1.0


def alive(pid):
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class RunnerTests(unittest.TestCase):

    def setUp(self):
        # Not trial's mktemp(): that writes into the current folder, i.e. the checkout.
        self.folder = tempfile.mkdtemp(prefix="medulla-runner-")
        self.work = os.path.join(self.folder, "work")
        self.cwd = os.path.join(self.folder, "package")
        os.mkdir(self.work)
        os.mkdir(self.cwd)
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.runner = Runner(reactor, self.cwd, work_dir=self.work, kill_grace=GRACE)

    def pid_from(self, name):
        with open(os.path.join(self.cwd, name)) as f:
            pid = int(f.read())
        self.addCleanup(self._kill, pid)
        return pid

    @staticmethod
    def _kill(pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    @defer.inlineCallbacks
    def test_exit_codes_are_returned(self):
        for code in (0, 3, 255):
            result = yield self.runner.run_command(["/bin/sh", "-c", "exit %d" % code], {}, 10)
            self.assertEqual(result, (code, b""))

    @defer.inlineCallbacks
    def test_a_process_killed_by_a_signal_reports_128_plus_the_signal(self):
        code, _ = yield self.runner.run_command(["/bin/sh", "-c", "kill -9 $$"], {}, 10)
        self.assertEqual(code, 137)

    @defer.inlineCallbacks
    def test_stdout_and_stderr_are_interleaved_in_order(self):
        result = yield self.runner.run_script(
            "/bin/sh", "echo 1; echo 2 >&2; echo 3; echo 4 >&2; exit 2", {}, 10)
        self.assertEqual(result, (2, b"1\n2\n3\n4\n"))

    @defer.inlineCallbacks
    def test_only_the_last_mebibyte_of_output_is_kept(self):
        code, output = yield self.runner.run_script(
            "/bin/sh", "head -c 3145728 /dev/zero | tr '\\0' a; printf END", {}, 30)
        self.assertEqual(code, 0)
        self.assertEqual(len(output), MAX_OUTPUT)
        self.assertTrue(output.endswith(b"aaaEND"))

    @defer.inlineCallbacks
    def test_timeout_kills_a_child_that_ignores_sigterm_and_its_grandchild(self):
        body = ("trap '' TERM\n"
                "sleep 1000 &\n"
                "echo $! > grandchild.pid\n"
                "echo $$ > child.pid\n"
                "echo ready\n"
                "while :; do sleep 0.1; done\n")
        started = time.monotonic()
        d = self.runner.run_script("/bin/sh", body, {}, 0.5)
        failure = yield self.assertFailure(d, StepTimedOut)
        elapsed = time.monotonic() - started
        child, grandchild = self.pid_from("child.pid"), self.pid_from("grandchild.pid")
        self.assertIn(b"ready", failure.output)
        self.assertEqual(str(failure), "timed out after 0.5s")
        self.assertTrue(0.5 + GRACE <= elapsed < 0.5 + GRACE + DRAIN_GRACE + 2, elapsed)
        self.assertFalse(alive(child))
        self.assertFalse(alive(grandchild))

    @defer.inlineCallbacks
    def test_timeout_waits_for_a_grandchild_that_outlives_its_parent(self):
        body = ("(trap '' TERM; exec sleep 1000) &\n"
                "echo $! > grandchild.pid\n"
                "wait\n")
        d = self.runner.run_script("/bin/sh", body, {}, 0.5)
        yield self.assertFailure(d, StepTimedOut)
        self.assertFalse(alive(self.pid_from("grandchild.pid")))

    @defer.inlineCallbacks
    def test_a_background_process_holding_the_output_does_not_hang_the_step(self):
        started = time.monotonic()
        result = yield self.runner.run_script(
            "/bin/sh", "sleep 30 & echo $! > background.pid; echo done", {}, 20)
        self.pid_from("background.pid")
        self.assertEqual(result, (0, b"done\n"))
        self.assertLess(time.monotonic() - started, DRAIN_GRACE + 2)

    @defer.inlineCallbacks
    def test_the_environment_is_clean_plus_the_step_variables(self):
        os.environ["MEDULLA_TEST_SECRET"] = "leaked"
        self.addCleanup(os.environ.pop, "MEDULLA_TEST_SECRET")
        code, output = yield self.runner.run_command(["/usr/bin/env"], {"FOO": "bar baz"}, 10)
        self.assertEqual(code, 0)
        self.assertEqual(sorted(output.decode().splitlines()),
                         ["FOO=bar baz", "LANG=C.UTF-8", "PATH=" + DEFAULT_PATH])

    @defer.inlineCallbacks
    def test_the_script_file_is_private_and_removed_after(self):
        code, output = yield self.runner.run_script(
            "/bin/sh", 'stat -c %a "$0"; echo "$0"; pwd', {}, 10)
        mode, path, cwd = output.decode().splitlines()
        self.assertEqual((code, mode, cwd), (0, "700", self.cwd))
        self.assertEqual(os.path.dirname(path), self.work)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.work), [])

    @defer.inlineCallbacks
    def test_commands_run_without_a_shell(self):
        result = yield self.runner.run_command(["/bin/echo", "$HOME", "*", "a b;ls"], {}, 10)
        self.assertEqual(result, (0, b"$HOME * a b;ls\n"))

    @defer.inlineCallbacks
    def test_a_missing_interpreter_is_a_failed_step_with_a_message(self):
        code, output = yield self.runner.run_script("/nonexistent/interpreter", "x", {}, 10)
        self.assertNotEqual(code, 0)
        self.assertIn(b"No such file or directory", output)
        self.assertEqual(os.listdir(self.work), [])

    def test_a_missing_step_folder_is_refused_at_once(self):
        runner = Runner(reactor, os.path.join(self.folder, "absent"), work_dir=self.work)
        self.assertRaises(OSError, runner.run_command, ["/bin/true"], {}, 10)
        self.assertRaises(OSError, runner.run_script, "/bin/sh", "true", {}, 10)
        self.assertEqual(os.listdir(self.work), [])

    @defer.inlineCallbacks
    def test_reboot_and_restart_run_the_configured_commands(self):
        runner = Runner(reactor, self.cwd, reboot_command=["/bin/echo", "rebooting"],
                        restart_command=["/bin/sh", "-c", "echo restarting; exit 1"])
        self.assertEqual((yield runner.reboot()), (0, b"rebooting\n"))
        self.assertEqual((yield runner.restart_agent()), (1, b"restarting\n"))

    @defer.inlineCallbacks
    def test_cancelling_a_step_kills_its_process_group(self):
        d = self.runner.run_script(
            "/bin/sh", "trap '' TERM; echo $$ > child.pid; while :; do sleep 0.1; done", {}, 60)
        for _ in range(100):  # a loaded machine may take a while to start the shell
            if os.path.exists(os.path.join(self.cwd, "child.pid")) and \
                    os.path.getsize(os.path.join(self.cwd, "child.pid")):
                break
            yield sleep(0.1)
        pid = self.pid_from("child.pid")
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        for _ in range(int((GRACE + 2) / 0.1)):
            if not alive(pid):
                break
            yield sleep(0.1)
        self.assertFalse(alive(pid))
        # The runner sees the group gone on its next poll: let it finish its own timers.
        for _ in range(100):
            if not [c for c in reactor.getDelayedCalls()
                    if c.active() and getattr(c.func, "__qualname__", "").startswith("_Run.")]:
                break
            yield sleep(0.1)

    @defer.inlineCallbacks
    def test_the_sample_package_runs_to_success_through_the_engine(self):
        shutil.rmtree(self.cwd)
        shutil.copytree(SAMPLE, self.cwd)
        with open(os.path.join(SAMPLE, "descriptor.json"), "rb") as f:
            steps = parse_descriptor(f.read()).sequences["linux"]["install"]
        progress, done = [], defer.Deferred()
        engine = StepEngine(steps, self.runner, reactor, lambda *a: progress.append(a),
                            lambda *a: done.callback(a))
        engine.start()
        result = yield done
        self.assertEqual(result, ("success", "check", 0))
        self.assertEqual([p[0] for p in progress], ["greet", "hello", "check"])
        self.assertEqual(progress[1][4], "Hello from a native package.\ngreeting bonjour\n")
