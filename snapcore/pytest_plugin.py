"""pytest plugin: ELF cores of a hung test, of pytest and of every process it started.

Registered through the ``pytest11`` entry point; it does nothing unless a
timeout is set:

    --snapcore-timeout=SECS   ini: snapcore_timeout   marker: @pytest.mark.snapcore_timeout(SECS)
    --snapcore-dir=DIR        ini: snapcore_dir       (default: ./snapcore-hangs)
    --snapcore-grace=SECS     ini: snapcore_grace     (SIGTERM -> SIGKILL, default 2)
    --snapcore-mini, --snapcore-compress=zstd, --snapcore-max-size=SIZE, ...
                              every snapshot option of `snapcore PID`, prefixed
                              (cli/common.py SNAPSHOT_OPTIONS); --snapcore-live is
                              refused: a test's processes are snapshotted as a tree

The timer covers the whole test (setup, call, teardown).  When it runs out,
a watchdog thread:

    1. snapshot_tree(pytest's pid) into DIR/<test id>[-<xdist worker>]/
       (pytest through the helper process, the processes the test started by
       the watchdog's tracer thread; see capture/tree.py and capture/helper.py)
    2. adds the paths to the test's user_properties, and the verdict of
       `snapcore why` on the folder (snapcore_verdict, snapcore_why: the
       JUnit XML properties); the failure message carries the verdict and the
       top stack groups (at most 20 lines)
    3. interrupts the main thread: a signal whose handler raises pytest's
       Failed with a message naming the folder (pytest-timeout's "signal"
       method), so the test fails and the session goes on
    4. terminates the processes the test started (those that were not
       there when it began): SIGTERM, SIGKILL after the grace period
    5. if the handler did not run (C code holds the main thread and never
       returns to Python), it ends the process with os._exit(1) once the
       cores are written (pytest-timeout's "thread" method); under
       pytest-xdist the worker is replaced and the session goes on.

A ``snapcore-test.json`` in each folder says which test it was; the terminal
summary lists the folders written during the session.
"""

import json
import os
import re
import signal
import sys
import threading
import time

import pytest

from .capture.kill import terminate
from .capture.tree import snapshot_tree
from .cli.common import add_snapshot_options, options_from
from .errors import InvalidRequest, SnapcoreError
from .procfs import read_stat
from .proctree import descendants_with_start
from .read.stacks import shown_cmdline, summarize
from .read.why import explain
from .read.whytext import brief

DEFAULT_DIR = "snapcore-hangs"
DEFAULT_GRACE = 2.0
INTERRUPT_WAIT = 1.0  # for the handler to run before the test's processes are ended
C_HANG_WAIT = 2.0  # more, after they are ended, before the process is ended
TEST_JSON = "snapcore-test.json"
# Not SIGALRM: pytest-timeout's signal method owns that one.
INTERRUPT_SIGNAL = signal.SIGRTMIN + 3

_KEY_SETTINGS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("snapcore", "ELF cores of hung tests and their subprocesses (snapcore)")
    group.addoption(
        "--snapcore-timeout",
        type=float,
        default=None,
        metavar="SECS",
        help="when a test runs longer than SECS: write cores of pytest and of "
        "every process it started, fail the test, end those processes",
    )
    group.addoption(
        "--snapcore-dir",
        default=None,
        metavar="DIR",
        help=f"where the per-test folders of cores go (default ./{DEFAULT_DIR})",
    )
    group.addoption(
        "--snapcore-grace",
        type=float,
        default=None,
        metavar="SECS",
        help="seconds between SIGTERM and SIGKILL for the processes of a "
        f"timed-out test (default {DEFAULT_GRACE:g})",
    )
    add_snapshot_options(group.addoption, prefix="snapcore-")
    parser.addini("snapcore_timeout", "snapcore: per-test timeout in seconds (0: none)")
    parser.addini("snapcore_dir", f"snapcore: directory for cores (default {DEFAULT_DIR})")
    parser.addini(
        "snapcore_grace", "snapcore: SIGTERM to SIGKILL delay for a timed-out test's processes"
    )


def _number(value, where):
    if value is None or value == "":
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"snapcore: {where} must be a number of seconds, not {value!r}"
        ) from None
    if n < 0:
        raise pytest.UsageError(f"snapcore: {where} cannot be negative")
    return n


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "snapcore_timeout(seconds): write cores of pytest and of the processes "
        "this test started if it runs longer than seconds, then fail it (0: none)",
    )
    timeout = config.getoption("snapcore_timeout")
    if timeout is None:
        timeout = _number(config.getini("snapcore_timeout"), "snapcore_timeout")
    else:
        timeout = _number(timeout, "--snapcore-timeout")
    grace = config.getoption("snapcore_grace")
    grace = _number(
        grace if grace is not None else config.getini("snapcore_grace"), "snapcore grace"
    )
    outdir = config.getoption("snapcore_dir") or config.getini("snapcore_dir") or DEFAULT_DIR
    outdir = os.path.join(str(config.invocation_params.dir), outdir)
    try:
        options = options_from(config.option, prefix="snapcore-", trigger="pytest")
        options.check_path("pytest")
    except InvalidRequest as exc:
        raise pytest.UsageError(f"snapcore: {exc}") from None
    config.stash[_KEY_SETTINGS] = {
        "options": options,
        "timeout": timeout or None,
        "dir": os.path.abspath(outdir),
        "grace": DEFAULT_GRACE if grace is None else grace,
        "started": time.time(),
        "watch": None,
    }


def pytest_report_header(config):
    s = config.stash.get(_KEY_SETTINGS, None)
    if s and s["timeout"]:
        return [f"snapcore: timeout {s['timeout']:g}s, cores into {s['dir']}"]
    return None


def _item_timeout(item):
    s = item.config.stash[_KEY_SETTINGS]
    marker = item.get_closest_marker("snapcore_timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("seconds")
        return _number(value, f"snapcore_timeout marker of {item.nodeid}") or None
    return s["timeout"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    timeout = _item_timeout(item)
    if not timeout:
        yield
        return
    settings = item.config.stash[_KEY_SETTINGS]
    watch = _Watch(item, timeout, settings)
    settings["watch"] = watch
    watch.start()
    try:
        yield
    finally:
        settings["watch"] = None
        watch.stop()


def pytest_enter_pdb(config, pdb):
    """A debugger session is no hang: stop the timer."""
    s = config.stash.get(_KEY_SETTINGS, None)
    if s and s["watch"] is not None:
        s["watch"].disarm()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    s = config.stash.get(_KEY_SETTINGS, None)
    if not s or not os.path.isdir(s["dir"]):
        return
    found = []
    for name in sorted(os.listdir(s["dir"])):
        try:
            with open(os.path.join(s["dir"], name, TEST_JSON)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if doc.get("time", 0) >= s["started"]:
            found.append((os.path.join(s["dir"], name), doc))
    if not found:
        return
    tr = terminalreporter
    tr.write_sep(
        "=", f"snapcore: {len(found)} hung test{'s' if len(found) != 1 else ''}", yellow=True
    )
    for folder, doc in found:
        shown = os.path.relpath(folder) if not os.path.relpath(folder).startswith("..") else folder
        n = doc.get("cores", 0)
        tr.write_line(
            f"{doc.get('nodeid')}: timed out after {doc.get('timeout'):g}s, "
            f"{n} core{'s' if n != 1 else ''} in {shown}/"
            + (
                ""
                if doc.get("interrupted", True)
                else " (the main thread was stuck in C code: process ended)"
            )
        )


# ---------------------------------------------------------------------------


def _safe(nodeid, limit=120):
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", nodeid.replace("::", "--")).strip("_")
    return name[:limit] or "test"


def _make_folder(root, nodeid):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = _safe(nodeid) + (f"-{worker}" if worker else "")
    os.makedirs(root, exist_ok=True)
    for n in range(1, 1000):
        path = os.path.join(root, base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}/{base}: too many folders")


class _Watch:
    """The timer of one test; fires on a watchdog thread."""

    def __init__(self, item, timeout, settings):
        self.item = item
        self.timeout = timeout
        self.settings = settings
        self.lock = threading.Lock()
        self.state = "armed"  # armed -> firing -> fired, or -> done
        self.acked = threading.Event()
        self.may_raise = True
        self.message = None
        self.killed = {}
        self.baseline = descendants_with_start(os.getpid())
        self.use_signal = threading.current_thread() is threading.main_thread()
        self.old_handler = None
        self.timer = threading.Timer(timeout, self._fire)
        self.timer.daemon = True
        self.timer.name = f"snapcore-watchdog {item.nodeid}"

    def start(self):
        if self.use_signal:
            self.old_handler = signal.signal(INTERRUPT_SIGNAL, self._on_signal)
        self.timer.start()

    def disarm(self):
        with self.lock:
            if self.state == "armed":
                self.state = "done"
        self.timer.cancel()

    def stop(self):
        """End of the test's protocol, on the main thread."""
        self.may_raise = False
        self.disarm()
        self.timer.join()
        if self.state == "fired" and self.use_signal:
            # let the signal we sent be handled while our handler is in place
            end = time.monotonic() + 1.0
            while not self.acked.is_set() and time.monotonic() < end:
                time.sleep(0.01)
        if self.use_signal:
            signal.signal(INTERRUPT_SIGNAL, self.old_handler)
        self._reap_killed()

    def _reap_killed(self):
        """Reap the test's children we ended, if their Popen objects did not."""
        for pid in self.killed:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            except OSError:
                pass

    def _on_signal(self, signum, frame):
        self.acked.set()
        if self.may_raise and self.message:
            __tracebackhide__ = True
            pytest.fail(self.message, pytrace=True)

    # -- on the watchdog thread ----------------------------------------------
    def _fire(self):
        with self.lock:
            if self.state != "armed":
                return
            self.state = "firing"
        try:
            self._snapshot_and_interrupt()
        finally:
            self.state = "fired"

    def _snapshot_and_interrupt(self):
        item, s = self.item, self.settings
        me = os.getpid()
        folder, tree, error = None, None, None
        try:
            folder = _make_folder(s["dir"], item.nodeid)
            options = s["options"]
            if options.reason is None:
                options = options.replace(
                    reason=f"pytest: {item.nodeid} still running after {self.timeout:g}s"
                )
            tree = snapshot_tree(me, folder, options)
        except (SnapcoreError, OSError) as exc:
            error = exc
        except Exception as exc:  # never let the watchdog die silently
            error = exc
        if tree is not None:
            item.user_properties.append(("snapcore_dir", folder))
            for p in tree.ok:
                item.user_properties.append((f"snapcore_core_{p.pid}", p.core))
            verdict, why_lines = _why(folder)
            if verdict is not None:
                item.user_properties.append(("snapcore_verdict", verdict["verdict"]))
                item.user_properties.append(("snapcore_why", verdict["summary"]))
            msg = _message(self.timeout, folder, tree, me, self._started_by_test)
            msg = "\n".join([msg.split("\n", 1)[0], *why_lines, *msg.split("\n")[1:]])
        else:
            msg = (
                f"snapcore: test still running after {self.timeout:g}s; taking cores "
                f"failed: {error}"
            )
        self.message = msg
        self._write_test_json(folder, tree, interrupted=True)
        if self.use_signal:
            try:
                signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)
            except (OSError, ValueError):
                pass
            self.acked.wait(INTERRUPT_WAIT)
        self.killed = self._end_test_processes()
        if self.use_signal and self.acked.wait(C_HANG_WAIT):
            return
        # the main thread is stuck where no Python signal handler can run
        self._write_test_json(folder, tree, interrupted=False)
        _emergency_exit(item, msg)

    def _started_by_test(self, pid):
        try:
            start = read_stat(pid).starttime
        except Exception:
            return False
        return self.baseline.get(pid) != start

    def _end_test_processes(self):
        me = os.getpid()

        def find():
            now = descendants_with_start(me)
            return {p: st for p, st in now.items() if self.baseline.get(p) != st}

        return terminate(find, self.settings["grace"])

    def _write_test_json(self, folder, tree, interrupted):
        if folder is None:
            return
        doc = {
            "nodeid": self.item.nodeid,
            "worker": os.environ.get("PYTEST_XDIST_WORKER"),
            "pytest_pid": os.getpid(),
            "timeout": self.timeout,
            "time": time.time(),
            "cores": len(tree.ok) if tree else 0,
            "interrupted": interrupted,
            "message": self.message,
        }
        tmp = os.path.join(folder, f".{TEST_JSON}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
            os.replace(tmp, os.path.join(folder, TEST_JSON))
        except OSError:
            pass


def _why(folder):
    """(the `snapcore why` result of a hung test's folder, at most 20 lines of it);
    (None, [a line saying why not]) if it could not be made."""
    try:
        result = explain(folder)
    except Exception as exc:  # a verdict is a bonus: never lose the cores over it
        return None, [f"snapcore why: no verdict ({type(exc).__name__}: {exc})"]
    return result, brief(result, max_lines=20)


def _message(timeout, folder, tree, me, started_by_test, limit=8):
    """The failure message: the folder, each process and, for those the test
    started, where their threads were (pytest prints the test's own traceback).

        snapcore: test still running after 2s; cores of 2 processes in DIR/
          pid 100 (pytest): core.100
          pid 123 (python -c ...), started by the test: core.123; stacks by pystack:
            thread 123: child_hangs_here (<string>:4) <- <module> (<string>:5)
    """
    n = len(tree.ok)
    lines = [
        f"snapcore: test still running after {timeout:g}s; cores of {n} "
        f"process{'es' if n != 1 else ''} in {folder}/"
    ]
    if getattr(tree, "bundle", None):
        lines.append(f"  bundle: {tree.bundle['path']} (snapcore debug opens it anywhere)")
    for i, p in enumerate(tree.processes):
        if i >= 2 * limit:
            lines.append(f"  ... {len(tree.processes) - i} more in manifest.json")
            break
        what = "pytest" if p.pid == me else shown_cmdline(p.cmdline, 60) or p.comm
        started = p.pid != me and started_by_test(p.pid)
        head = f"  pid {p.pid} ({what}){', started by the test' if started else ''}: "
        if not p.ok:
            lines.append(head + f"no core: {p.error}")
            continue
        tool, stack = summarize(p.core, p.exe, p.python) if started and i <= limit else (None, [])
        lines.append(head + os.path.basename(p.core) + (f"; stacks by {tool}:" if stack else ""))
        lines.extend(f"    {line}" for line in stack[:8])
    return "\n".join(lines)


def _emergency_exit(item, msg):
    """pytest-timeout's thread method: say why (past pytest's capture), then end."""
    text = (
        f"\n{'+' * 20} snapcore timeout {'+' * 20}\n{item.nodeid}: {msg}\n"
        "The main thread did not return to Python (stuck in C code), so the test "
        "cannot be failed in place: ending this pytest process.\n"
    )
    try:
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(item)
    except Exception:
        pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(1)
