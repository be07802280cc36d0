"""The pytest plugin, on real hanging test suites run by a subprocess pytest."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from support.oracles import pystack
from support.targets import HANGSUITES

KNOWN_CPYTHONS = {(3, 11), (3, 12), (3, 13)}  # snapcore's CPython reader (docs/why.md)

RUN_TIMEOUT = 120  # hard limit for one subprocess pytest run


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Suite:
    """A throw-away test project in tmp_path, run by `python -m pytest` in a subprocess."""

    def __init__(self, root, ini=""):
        self.root = root
        self.pidfile = root / "child.pid"
        (root / "pytest.ini").write_text("[pytest]\n" + ini)
        self.pids = []

    def add(self, name, source=None, template=None):
        if template:
            shutil.copy(os.path.join(HANGSUITES, template), self.root / name)
        else:
            (self.root / name).write_text(source)

    def run(self, *args):
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPCORE_"))
        }  # not the outer xdist's
        env["SNAPCORE_SUITE_PIDFILE"] = str(self.pidfile)
        try:
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-o",
                    "console_output_style=classic",
                    *args,
                ],
                cwd=self.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
        finally:
            if self.pidfile.exists():
                self.pids.append(int(self.pidfile.read_text()))
        self.out = p.stdout + p.stderr
        return p

    def folders(self, base="snapcore-hangs"):
        d = self.root / base
        return sorted(d.iterdir()) if d.exists() else []

    def cleanup(self):
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def suite(tmp_path):
    made = []

    def _make(ini=""):
        s = Suite(tmp_path, ini)
        made.append(s)
        return s

    try:
        yield _make
    finally:
        for s in made:
            s.cleanup()


def pystack_out(core):
    p = pystack(core, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("workers", [None, "2"], ids=["no-xdist", "xdist"])
def test_hung_test_fails_with_cores_of_pytest_and_its_child(suite, workers):
    s = suite()
    s.add("test_hang_suite.py", template="hang_suite.py")
    args = ["--snapcore-timeout=2", "--junitxml=report.xml"]
    if workers:
        args += ["-n", workers, "--dist", "loadfile"]
    p = s.run(*args)
    out = s.out
    assert p.returncode == 1, out
    assert re.search(r"\b1 failed, 2 passed\b", out), out
    assert "FAILED test_hang_suite.py::test_hangs" in out

    [folder] = s.folders()
    worker = re.search(r"\[(gw\d+)\]", out).group(1) if workers else None
    assert folder.name == "test_hang_suite.py--test_hangs" + (f"-{worker}" if worker else "")
    # the failure names the folder, and shows where the child was
    assert (
        f"Failed: snapcore: test still running after 2s; cores of 2 processes in {folder}/" in out
    )
    assert re.search(r"pid \d+ \(pytest\): core\.\d+\n", out), out
    assert re.search(
        rf"pid {s.pids[0]} \(.*\), started by the test: core\.{s.pids[0]}; "
        r"stacks by pystack:\n.*thread \d+: child_hangs_here \(<string>:",
        out,
    ), out
    # the terminal summary line
    assert "snapcore: 1 hung test" in out
    assert (
        f"test_hang_suite.py::test_hangs: timed out after 2s, 2 cores in "
        f"snapcore-hangs/{folder.name}/"
    ) in out

    doc = json.loads((folder / "manifest.json").read_text())
    [me] = [e for e in doc["processes"] if e["caller"]]
    [child] = [e for e in doc["processes"] if not e["caller"]]
    assert doc["root"] == me["pid"]
    assert child["pid"] == s.pids[0] and child["ppid"] == me["pid"]
    assert me["result"] == child["result"] == "ok"
    assert sorted(os.listdir(folder)) == sorted(
        [f"core.{me['pid']}", f"core.{child['pid']}", "manifest.json", "snapcore-test.json"]
    )

    # pystack shows the hung Python functions in each core
    theirs = pystack_out(folder / f"core.{me['pid']}")
    assert "in parent_waits_here" in theirs and "in test_hangs" in theirs
    assert "in child_hangs_here" in pystack_out(folder / f"core.{child['pid']}")

    # the paths are in the report (user_properties -> junitxml properties)
    props = {
        pr.get("name"): pr.get("value") for pr in ET.parse(s.root / "report.xml").iter("property")
    }
    assert props["snapcore_dir"] == str(folder)
    assert props[f"snapcore_core_{child['pid']}"] == str(folder / f"core.{child['pid']}")
    # test_child_was_ended passed inside the session; and nothing is left now
    assert not alive(child["pid"])


@pytest.mark.parametrize("workers", [None, "2"], ids=["no-xdist", "xdist"])
def test_main_thread_stuck_in_c_ends_the_process_after_the_cores(suite, workers):
    s = suite()
    s.add("test_c_hang_suite.py", template="c_hang_suite.py")
    args = ["--snapcore-timeout=2", "--snapcore-grace=0.5"]
    if workers:
        args += ["-n", workers]
    p = s.run(*args)
    out = s.out
    assert p.returncode == 1, out
    assert "stuck in C code" in out
    [folder] = s.folders()
    doc = json.loads((folder / "manifest.json").read_text())
    [me] = [e for e in doc["processes"] if e["caller"]]
    [child] = [e for e in doc["processes"] if not e["caller"]]
    assert child["pid"] == s.pids[0]
    assert "in deadlock_in_c" in pystack_out(folder / f"core.{me['pid']}")
    assert "in child_of_the_c_hang" in pystack_out(folder / f"core.{child['pid']}")
    test_json = json.loads((folder / "snapcore-test.json").read_text())
    assert test_json["interrupted"] is False
    assert not alive(child["pid"])
    if workers:
        # the worker was replaced and the session went on
        assert "worker 'gw" in out and "crashed while running 'test_c_hang_suite.py::" in out
        assert re.search(r"\b1 failed, 1 passed\b", out), out
        assert "(the main thread was stuck in C code: process ended)" in out


SLEEPY = """
import time
import pytest

def sleeps_in_python():
    time.sleep(30)

@pytest.mark.snapcore_timeout(1)
def test_marked():
    sleeps_in_python()

def test_unmarked():
    time.sleep(1.5)
"""


def test_marker_and_ini_options(suite):
    s = suite(ini="snapcore_timeout = 60\nsnapcore_dir = hangs-here\nsnapcore_grace = 0\n")
    s.add("test_sleepy.py", SLEEPY)
    p = s.run()
    assert p.returncode == 1, s.out
    assert re.search(r"\b1 failed, 1 passed\b", s.out), s.out
    assert "snapcore: timeout 60s, cores into" in s.out  # the report header
    [folder] = s.folders("hangs-here")
    assert folder.name == "test_sleepy.py--test_marked"
    assert "test still running after 1s" in s.out
    [core] = [f for f in os.listdir(folder) if f.startswith("core.")]
    assert "in sleeps_in_python" in pystack_out(folder / core)


def test_beside_pytest_timeout(suite):
    s = suite()
    s.add("test_sleepy.py", SLEEPY.replace("@pytest.mark.snapcore_timeout(1)\n", ""))
    # snapcore's timeout is the shorter: it fires first
    p = s.run("--timeout=60", "--snapcore-timeout=1", "-k", "marked and not unmarked")
    assert p.returncode == 1, s.out
    assert "Failed: snapcore: test still running after 1s; cores of 1 process in" in s.out
    assert "Timeout (>" not in s.out
    assert len(s.folders()) == 1
    # pytest-timeout's is the shorter: it fires, snapcore stays out of the way
    shutil.rmtree(s.root / "snapcore-hangs")
    p = s.run("--timeout=1", "--snapcore-timeout=30", "-k", "marked and not unmarked")
    assert p.returncode == 1, s.out
    assert "Timeout (>1.0s) from pytest-timeout" in s.out
    assert "snapcore: test still running" not in s.out
    assert s.folders() == []


def test_inactive_unless_asked(suite):
    s = suite()
    s.add("test_quick.py", "def test_quick():\n    pass\n")
    p = s.run("-v")
    assert p.returncode == 0, s.out
    assert "snapcore" not in "".join(
        line for line in s.out.splitlines(True) if not line.startswith("plugins:")
    )
    assert s.folders() == []


def test_bad_timeout_is_a_usage_error(suite):
    s = suite()
    s.add("test_quick.py", "def test_quick():\n    pass\n")
    p = s.run("--snapcore-timeout=-3")
    assert p.returncode == 4, s.out  # pytest's usage error
    assert "snapcore: --snapcore-timeout cannot be negative" in s.out


def test_each_hung_test_reports_its_own_verdict(suite):
    """Under xdist, each hung test's failure and JUnit XML carry its own verdict.

    (Without xdist both tests run in one pytest process, and the deadlocked
    threads the first one leaves behind are part of the second one's verdict.)
    """
    s = suite()
    s.add("test_hang_suite.py", template="hang_suite.py")
    s.add("test_deadlock_suite.py", template="deadlock_suite.py")
    args = ["--snapcore-timeout=2", "--snapcore-grace=0.5", "--junitxml=report.xml"]
    p = s.run(*args, "-n", "2", "--dist", "loadfile")
    out = s.out
    assert p.returncode == 1, out
    assert re.search(r"\b2 failed, 2 passed\b", out), out
    # verdict first, then at most 20 lines of it, in each failure
    assert "snapcore why: blocked: " in out and "waits for child pid" in out
    if sys.version_info[:2] in KNOWN_CPYTHONS:  # the cycle, by lock and Python function
        first = "takes_first_then_second (test_deadlock_suite.py:"
        deadlock = "deadlock", "waits for RLock 0x", first
    else:  # no lock owners from an older CPython: the failure says so, native stacks shown
        v = "{}.{}".format(*sys.version_info[:2])
        deadlock = "idle", f"python reader: CPython {v} is not supported", "PyThread_acquire_lock"
    assert f"snapcore why: {deadlock[0]}: " in out and deadlock[1] in out, out
    assert deadlock[2] in out, out
    for block in re.findall(r"snapcore why: .*?(?=\n\S|\n[E ]\s+pid \d+ \()", out, re.S):
        assert len(block.splitlines()) <= 20, block
    verdicts = {}
    for case in ET.parse(s.root / "report.xml").iter("testcase"):
        props = {pr.get("name"): pr.get("value") for pr in case.iter("property")}
        if "snapcore_verdict" in props:
            verdicts[case.get("name")] = (props["snapcore_verdict"], props["snapcore_why"])
    assert verdicts["test_hangs"][0] == "blocked", verdicts
    assert "waits for child pid" in verdicts["test_hangs"][1]
    assert verdicts["test_deadlocks"][0] == deadlock[0], verdicts
    assert verdicts["test_deadlocks"][1].count("waits for RLock") == (
        2 if deadlock[0] == "deadlock" else 0
    )
