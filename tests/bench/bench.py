#!/usr/bin/env python3
"""make bench: snapcore against gdb's gcore, in one run, alternating runs.

    bench.py [--quick] [--tiny] [--reps N] [--only NAME[,NAME...]] [--out DIR]
             [--no-drop-caches] [--list]

For each target (tests/bench/benchtarget.c, started here and killed and reaped
in ``finally``) the tools run in turn, rep after rep:

    gcore, snapcore, snapcore --live, [ceiling r+w, ceiling r], then the same
    cycle started one tool later (snapcore, snapcore --live, ..., gcore), ...

so that drift (the machine is shared) affects them all alike, and no tool
always runs right after the same other one.  Before each run
the dirty pages are synced and the page cache is dropped (as root; otherwise
only synced, and the report says so); after it the core is measured and deleted.

Each run records
  wall        the tool's command, from exec to exit (the CLI: interpreter start-up
              included; snapcore's own in-call wall_seconds is kept as well)
  pause       the largest gap between two ticks of the target's 1 ms heartbeat
              thread, i.e. how long the target itself could not run
  peak RSS    snapcore: VmHWM of the snapcore process just before it exits
              (snapwrap.py; live mode adds its guardian process's VmHWM);
              gcore: VmHWM of gdb after it detached (a gdb wrapper asks gdb's
              python for /proc/self/status before `quit`), and polled meanwhile
  file, disk  st_size and st_blocks*512 of the core
  cow         live mode: how long the copy-on-write image lived (Snapshot.cow_time)
The ceiling is the machine's raw speed at the job: ceiling.c reads the largest
random target with process_vm_readv in 16 MiB chunks and write()s it to a file,
in one thread (and a read-only variant), in the same run.  The target's own
fork() time (the page-table copy a live snapshot pays) is sampled every rep.

The report goes to stdout and OUT/results.md, the raw data to OUT/results.json.
Nothing here asserts on speed: the "goals" section compares the numbers with
the goals of issues 5 and 6 and says PASS or FAIL as measured.
"""
import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(HERE, "bin")
MiB = 1 << 20
GiB = 1 << 30

GCORE, SNAP, LIVE, CEIL_RW, CEIL_R = "gcore", "snapcore", "snapcore --live", \
    "ceiling r+w", "ceiling r"
TOOL_ORDER = (GCORE, SNAP, LIVE, CEIL_RW, CEIL_R)
RUN_TIMEOUT = 600.0           # one tool run; gcore of 4 GiB takes a few seconds
READY_TIMEOUT = 180.0         # filling 4 GiB on a busy machine
SETTLE_MAX = 20.0             # the longest wait for free page reporting to go quiet


# --------------------------------------------------------------------------
# what is measured


class Spec:
    """One target: benchtarget's arguments and the tools to run on it."""

    def __init__(self, name, title, *, random=0, zero=0, map=0, threads=0, thp=None,
                 noreserve=False, tools=(GCORE, SNAP), quick=False, gcore_skip=None):
        self.name, self.title = name, title
        self.random, self.zero, self.map, self.threads = random, zero, map, threads
        self.thp, self.noreserve = thp, noreserve
        self.tools = list(tools)
        self.quick = quick
        self.gcore_skip = gcore_skip          # why gcore is not run on it
        self.ceiling = False                  # chosen per run (the largest random target)

    def argv(self):
        a = [os.path.join(BIN, "benchtarget")]
        for opt, v in (("--map", self.map), ("--random", self.random), ("--zero", self.zero),
                       ("--threads", self.threads)):
            if v:
                a += [opt, str(v // MiB if opt != "--threads" else v)]
        if self.thp is True:
            a.append("--thp")
        elif self.thp is False:
            a.append("--nothp")
        if self.noreserve:
            a.append("--noreserve")
        return a

    @property
    def mapped(self):
        return max(self.map, self.random + self.zero)


def human(n):
    if n is None:
        return "n/a"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}" if v < 100 else \
                f"{v:.0f} {unit}"
    return f"{n} B"


def specs(tiny):
    """The targets of issues 5 and 6.  --tiny shrinks them for the smoke test."""
    s = (lambda mib: (mib // 32 if tiny else mib) * MiB)
    live = (GCORE, SNAP, LIVE)
    threads = 100 if tiny else 1000
    reserved = s(65536) if not tiny else GiB
    touched = s(256) if not tiny else 16 * MiB
    plain = touched
    return [
        Spec("rand1g", f"{human(s(1024))} random", random=s(1024), thp=False, tools=live,
             quick=True),
        Spec("rand4g", f"{human(s(4096))} random", random=s(4096), thp=False, tools=live),
        Spec("rand1g-thp", f"{human(s(1024))} random, THP", random=s(1024), thp=True,
             tools=live, quick=True),
        Spec("rand4g-thp", f"{human(s(4096))} random, THP", random=s(4096), thp=True,
             tools=live),
        Spec("zero-untouched", f"{human(s(1024))}: 50% zero-written, 50% never touched",
             map=s(1024), zero=s(512), thp=False),
        Spec("plain256m", f"{human(plain)} random", random=plain, thp=False),
        Spec("reserved64g", f"{human(reserved)} reserved, {human(touched)} touched",
             map=reserved, random=touched, noreserve=True, thp=False, tools=(GCORE, SNAP),
             gcore_skip=f"gcore writes the whole {human(reserved)} reservation as data "
                        "(a 4 GiB reservation with 16 MiB touched gave gcore a 4.0 GiB core "
                        "on disk), which would fill this disk; not run"),
        Spec(f"threads{threads}", f"{threads} threads, 16 MiB random", random=16 * MiB,
             threads=threads, thp=False),
    ]


# --------------------------------------------------------------------------
# the target


class BenchTarget:
    """A running benchtarget; close() kills and reaps it whatever happened."""

    def __init__(self, spec, cwd):
        self.spec = spec
        self.proc = subprocess.Popen(spec.argv(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=cwd)
        self.pid = self.proc.pid
        self._buf = b""
        try:
            line = self.readline(READY_TIMEOUT)
            if not line.startswith("READY "):
                raise RuntimeError(f"benchtarget said {line!r}")
            self.info = json.loads(line[6:])
        except BaseException:
            self.close()
            raise

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"benchtarget {self.pid}: no answer within {timeout:.0f}s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.poll()
                    err = self.proc.stderr.read()[-300:] if rc is not None else b""
                    raise RuntimeError(f"benchtarget {self.pid} exited (rc={rc}, {err!r})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def command(self, text, timeout=30.0):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def gap(self):
        """(largest heartbeat gap, [(start, length)] of the gaps >= 1.5 ms), in
        seconds (start: CLOCK_REALTIME), since the last call; resets them."""
        reply = self.command("gap")
        m = re.match(r"GAP (\d+) (\d+) (\d+)((?: \d+:\d+)*)$", reply)
        if not m or len(m.group(4).split()) != int(m.group(3)):
            raise RuntimeError(f"benchtarget: bad gap reply {reply[:200]!r}")
        gaps = sorted((int(a) / 1e9, int(b) / 1e9)
                      for a, b in (g.split(":") for g in m.group(4).split()))
        return int(m.group(1)) / 1e9, gaps

    def fork_cost(self):
        reply = self.command("fork", timeout=60.0)
        m = re.match(r"FORK (\d+)$", reply)
        if not m:
            raise RuntimeError(f"benchtarget: bad fork reply {reply!r}")
        return int(m.group(1)) / 1e9

    def wait_in_read(self, timeout=10.0):
        """Until the main thread sits in read() again (live mode injects there)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.pid}/syscall") as f:
                    nr = f.read().split()[0]
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if nr == "0" and state == "S":
                return
            time.sleep(0.002)

    def smaps_rollup(self):
        out = {}
        try:
            with open(f"/proc/{self.pid}/smaps_rollup") as f:
                for line in f:
                    m = re.match(r"(\w+):\s+(\d+) kB", line)
                    if m:
                        out[m.group(1)] = int(m.group(2)) * 1024
        except OSError:
            pass
        return out

    def health(self):
        """None if every thread runs untraced; else what is wrong (and it is fixed
        where it can be: a leftover SIGSTOP is answered with SIGCONT)."""
        if self.proc.poll() is not None:
            return f"target exited (rc={self.proc.returncode})"
        bad = []
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return "target vanished"
        for t in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{t}/status") as f:
                    text = f.read()
            except OSError:
                continue
            state = re.search(r"^State:\s+(\S)", text, re.M).group(1)
            tracer = int(re.search(r"^TracerPid:\s+(\d+)", text, re.M).group(1))
            if tracer or state in "tT":
                bad.append(f"{t}:{state}/tracer {tracer}")
        kids = []
        for t in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{t}/children") as f:
                    kids += f.read().split()
            except OSError:
                pass
        if bad:
            os.kill(self.pid, signal.SIGCONT)
            return "threads stopped or traced after the run: " + ", ".join(bad[:5])
        if kids:
            return f"target has children after the run: {' '.join(kids)}"
        return None

    def close(self):
        try:
            if self.proc.poll() is None:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        finally:
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass


# --------------------------------------------------------------------------
# running a tool


def _status_kb(text, key):
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class HwmPoller:
    """Samples VmHWM of a process's descendants every 10 ms while it runs."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = {}                          # pid -> (comm, VmHWM kB)
        self.anon0 = _meminfo().get("AnonPages", 0)
        self.anon_max = self.anon0              # system-wide AnonPages, highest seen
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._stop.is_set():
            self.anon_max = max(self.anon_max, _meminfo().get("AnonPages", 0))
            todo = [self.pid]
            while todo:
                p = todo.pop()
                kids = _children(p)
                todo += kids
                if p == self.pid:
                    continue
                try:
                    with open(f"/proc/{p}/status") as f:
                        text = f.read()
                except OSError:
                    continue
                hwm = _status_kb(text, "VmHWM")
                comm = re.search(r"^Name:\s+(.*)$", text, re.M).group(1)
                if hwm is not None and hwm > self.peak.get(p, ("", 0))[1]:
                    self.peak[p] = (comm, hwm)
            self._stop.wait(0.01)

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)

    @property
    def anon_growth(self):
        return max(0, self.anon_max - self.anon0)

    def max_for(self, comm):
        vals = [h for c, h in self.peak.values() if c == comm]
        return max(vals) if vals else None


def run_command(argv, env=None, timeout=RUN_TIMEOUT):
    """Run argv in its own process group, sampling it with a HwmPoller (every tool
    alike).  Returns (rc, stdout, stderr, seconds, poller)."""
    poller = None
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        poller = HwmPoller(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            return None, out.decode(errors="replace"), \
                f"timed out after {timeout:.0f}s; killed", time.monotonic() - t0, poller
        wall = time.monotonic() - t0
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), \
            wall, poller
    finally:
        if poller is not None:
            poller.stop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.work = os.path.join(self.out, "work")
        self.tools = os.path.join(self.out, "tools")
        self.drop = False
        self.notes = []
        self.runs = []                         # every run, raw
        self.targets = {}                      # name -> facts about the target
        self.python = sys.executable

    # -- set-up ----------------------------------------------------------

    def setup(self):
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.tools, exist_ok=True)
        for f in os.listdir(self.work):
            os.unlink(os.path.join(self.work, f))
        subprocess.run(["make", "-s", "-C", HERE], check=True, timeout=300)
        gcore, gdb = shutil.which("gcore"), shutil.which("gdb")
        self.have_gcore = bool(gcore and gdb)
        if self.have_gcore:
            self._gdb_wrapper(os.path.realpath(gcore), os.path.realpath(gdb))
        else:
            self.notes.append("gcore/gdb not installed: no gcore rows, no ratios")
        if not self.args.no_drop_caches and os.geteuid() == 0 and \
                os.access("/proc/sys/vm/drop_caches", os.W_OK):
            self.drop = True
        self.cache_note = ("before every run: sync, then the page cache dropped "
                           "(echo 1 > /proc/sys/vm/drop_caches)" if self.drop else
                           "before every run: sync only (page cache not dropped"
                           + (": --no-drop-caches)" if self.args.no_drop_caches
                              else ": not root)"))
        if self.args.settle > 0:
            self.cache_note += (f", then a wait until free page reporting was idle for "
                                f"{self.args.settle:g} s")

    def _gdb_wrapper(self, gcore, gdb):
        """OUT/tools/gcore runs the real gcore script, which runs "$(dirname $0)/gdb":
        our wrapper, which execs the real gdb with one more command before `quit`
        (after gcore's `detach`): gdb's python writes gdb's /proc/self/status to
        $SNAPCORE_BENCH_GDB_STATUS, so gdb's VmHWM is read exactly."""
        link = os.path.join(self.tools, "gcore")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(gcore, link)
        wrapper = os.path.join(self.tools, "gdb")
        with open(wrapper, "w") as f:
            f.write(f"""#!/bin/bash
# written by tests/bench/bench.py: gdb for gcore, reporting gdb's VmHWM
args=()
for a in "$@"; do
    if [ "$a" = quit ] && [ -n "$SNAPCORE_BENCH_GDB_STATUS" ]; then
        args+=("python import os; open(os.environ['SNAPCORE_BENCH_GDB_STATUS'], 'w')"\\
".write(open('/proc/self/status').read())" -ex)
    fi
    args+=("$a")
done
exec {gdb} "${{args[@]}}"
""")
        os.chmod(wrapper, 0o755)

    def settle(self):
        """Sync, drop the page cache, and let the guest finish handing the memory
        freed so far back to its host (free page reporting), so that a run does not
        share the machine with the clean-up after the one before.  Returns seconds."""
        t0 = time.monotonic()
        os.sync()
        if self.drop:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        if self.args.settle > 0:
            last, still = _page_reporting_kib(), t0
            while last is not None and time.monotonic() - t0 < SETTLE_MAX:
                time.sleep(0.25)
                now = _page_reporting_kib()
                if now != last:
                    last, still = now, time.monotonic()
                elif time.monotonic() - still >= self.args.settle:
                    break
        return time.monotonic() - t0

    def disk_free(self):
        st = os.statvfs(self.work)
        return st.f_bavail * st.f_frsize

    # -- one run ---------------------------------------------------------

    def run_tool(self, target, tool, rep):
        spec = target.spec
        rec = {"target": spec.name, "tool": tool, "rep": rep, "error": None}
        core = os.path.join(self.work, f"core-{spec.name}-{rep}")
        need = spec.mapped if tool == GCORE else spec.random + 256 * MiB
        if self.disk_free() < need + 4 * GiB:
            rec["error"] = f"skipped: {human(self.disk_free())} free on disk, need " \
                           f"{human(need + 4 * GiB)}"
            return rec
        rec["settle"] = self.settle()
        target.gap()                                    # reset the heartbeat's maximum
        target.wait_in_read()
        rec["loadavg"] = os.getloadavg()[0]
        try:
            if tool == GCORE:
                core = self._gcore(target, rec)
            elif tool in (SNAP, LIVE):
                self._snapcore(target, rec, core, live=(tool == LIVE))
            else:
                self._ceiling(target, rec, core if tool == CEIL_RW else "-")
            time.sleep(0.05)                           # the heartbeat ticks after the resume
            rec["max_gap"], rec["gaps"] = target.gap()
            rec["pause"] = rec["max_gap"]
            window = rec.pop("freeze_window", None)
            if window:
                # snapcore: the gap at the freeze, and the largest stall at other times
                w0, w1 = window[0] - 0.001, window[1] + 0.001
                at = [n for a, n in rec["gaps"] if a < w1 and a + n > w0]
                rec["pause"] = max(at) if at else 0.0015     # < 1.5 ms: not logged
                rec["other_stall"] = max([n for a, n in rec["gaps"]
                                          if not (a < w1 and a + n > w0)], default=0.0)
            if core and os.path.exists(core):
                st = os.stat(core)
                rec["file_size"], rec["disk"] = st.st_size, st.st_blocks * 512
        finally:
            for f in os.listdir(self.work):
                try:
                    os.unlink(os.path.join(self.work, f))
                except OSError:
                    pass
        problem = target.health()
        if problem:
            rec["error"] = (rec["error"] + "; " if rec["error"] else "") + problem
        return rec

    def _gcore(self, target, rec):
        prefix = os.path.join(self.work, "gcore")
        status = os.path.join(self.out, "gdb-status.txt")
        if os.path.exists(status):
            os.unlink(status)
        env = dict(os.environ, SNAPCORE_BENCH_GDB_STATUS=status)
        rc, out, err, wall, poller = run_command(
            [os.path.join(self.tools, "gcore"), "-o", prefix, str(target.pid)], env=env)
        rec["wall"] = wall
        rec["anon_growth"] = poller.anon_growth
        core = f"{prefix}.{target.pid}"
        if rc != 0 or not os.path.exists(core):
            rec["error"] = f"gcore failed (rc={rc}): {(err or out).strip()[-300:]}"
        hwm = poller.max_for("gdb") if poller else None
        try:
            with open(status) as f:
                exact = _status_kb(f.read(), "VmHWM")
            os.unlink(status)
        except OSError:
            exact = None
        rec["rss"] = max(v for v in (hwm, exact, 0) if v is not None) * 1024 or None
        rec["rss_how"] = "gdb VmHWM (read by gdb)" if exact else "gdb VmHWM (polled)"
        return core

    def _snapcore(self, target, rec, core, live):
        hwm = os.path.join(self.out, "snapcore-hwm.json")
        if os.path.exists(hwm):
            os.unlink(hwm)
        argv = [self.python, os.path.join(HERE, "snapwrap.py"), hwm, str(target.pid),
                "-o", core, "--json", "-q"] + (["--live"] if live else [])
        rc, out, err, wall, poller = run_command(argv)
        rec["wall"] = wall
        rec["anon_growth"] = poller.anon_growth
        if rc != 0:
            rec["error"] = f"snapcore failed (rc={rc}): {err.strip()[-300:]}"
            return
        res = json.loads(out)
        rec["in_call_wall"] = res["wall_seconds"]
        rec["self_pause"] = res["pause_seconds"]
        rec["bytes_dumped"] = res["bytes_dumped"]
        if live:
            rec["cow"] = res.get("cow_seconds")
            rec["live"] = res.get("live")
            if res.get("live_fallback"):
                rec["error"] = f"live mode fell back: {res['live_fallback']}"
        try:
            with open(hwm) as f:
                h = json.load(f)
            os.unlink(hwm)
            rec["freeze_window"] = h.get("freeze_window")
            rec["rss_main"] = h["main_hwm_kb"] * 1024
            rec["rss_guardian"] = (h.get("guardian_hwm_kb") or 0) * 1024 or None
            rec["rss"] = rec["rss_main"] + (rec["rss_guardian"] or 0)
            if live and not rec["rss_guardian"]:
                rec["rss_note"] = "guardian's VmHWM not captured"
        except (OSError, ValueError, KeyError):
            rec["rss"] = None

    def _ceiling(self, target, rec, path):
        rc, out, err, wall, poller = run_command(
            [os.path.join(BIN, "ceiling"), str(target.pid), str(target.info["addr"]),
             str(target.spec.random), path])
        rec["wall"] = wall
        rec["anon_growth"] = poller.anon_growth
        if rc != 0:
            rec["error"] = f"ceiling failed: {err.strip()[-300:]}"
            return
        res = json.loads(out)
        rec["copy_seconds"] = res["seconds"]
        rec["gbps"] = res["bytes"] / res["seconds"] / 1e9

    # -- one target ------------------------------------------------------

    def run_target(self, spec, reps):
        facts = {"title": spec.title, "argv": spec.argv()[1:], "tools": [],
                 "fork": [], "skipped": {}}
        self.targets[spec.name] = facts
        # live mode: the image may come to hold a copy of every page it is read from
        need = (spec.random + spec.zero) * (2 if LIVE in spec.tools else 1) + GiB
        avail = _meminfo().get("MemAvailable", 0)
        if avail < need:
            facts["error"] = f"not run: {human(avail)} of memory available, needs {human(need)}"
            print(f"[bench] {spec.name}: {facts['error']}", flush=True)
            return
        tools = [t for t in TOOL_ORDER if t in spec.tools or
                 (spec.ceiling and t in (CEIL_RW, CEIL_R))]
        if GCORE in tools and (spec.gcore_skip or not self.have_gcore):
            tools.remove(GCORE)
            facts["skipped"][GCORE] = spec.gcore_skip or "gcore not installed"
        facts["tools"] = tools
        print(f"[bench] {spec.name}: {spec.title}: starting the target", flush=True)
        target = None
        try:
            target = BenchTarget(spec, self.work)
            facts["ready"] = target.info
            facts["smaps_start"] = target.smaps_rollup()
            target.gap()
            time.sleep(1.0)
            facts["idle_gap"] = target.gap()[0]       # the heartbeat's noise, nothing running
            for rep in range(1, reps + 1):
                # the order turns each rep (g s l, s l g, l g s...): still alternating,
                # and no tool always runs right after the same other one
                k = (rep - 1) % len(tools)
                for tool in tools[k:] + tools[:k]:
                    rec = self.run_tool(target, tool, rep)
                    self.runs.append(rec)
                    print(f"[bench]   {_run_line(rec)}", flush=True)
                if LIVE in tools:
                    target.wait_in_read()
                    facts["fork"].append(target.fork_cost())
            facts["smaps_end"] = target.smaps_rollup()
        except Exception as exc:               # the target failed: report it, go on
            facts["error"] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] {spec.name}: {facts['error']}", flush=True)
        finally:
            if target is not None:
                target.close()

    # -- all -------------------------------------------------------------

    def run(self):
        t0 = time.monotonic()
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.load_start = os.getloadavg()
        self.reported_start = _page_reporting_kib()
        chosen = select_specs(self.args)
        reps = 1 if self.args.quick and self.args.reps is None else (self.args.reps or 3)
        self.reps = reps
        print(f"[bench] {len(chosen)} targets, {reps} rep(s); {self.cache_note}", flush=True)
        try:
            for spec in chosen:
                self.run_target(spec, reps)
        finally:
            for f in os.listdir(self.work):
                try:
                    os.unlink(os.path.join(self.work, f))
                except OSError:
                    pass
        self.elapsed = time.monotonic() - t0
        self.load_end = os.getloadavg()
        self.reported_end = _page_reporting_kib()
        self.chosen = chosen


def _run_line(r):
    parts = [f"{r['tool']:<16} rep {r['rep']}"]
    if r.get("wall") is not None:
        parts.append(f"wall {r['wall']:.3f}s")
    if r.get("pause") is not None:
        parts.append(f"pause {fmt_t(r['pause'])}")
    if r.get("other_stall", 0) >= 0.005:
        parts.append(f"other stall {fmt_t(r['other_stall'])}")
    if r.get("rss"):
        parts.append(f"rss {r['rss'] / 1e6:.1f} MB")
    if r.get("disk") is not None:
        parts.append(f"disk {human(r['disk'])}")
    if r.get("gbps"):
        parts.append(f"{r['gbps']:.2f} GB/s")
    if r.get("cow") is not None:
        parts.append(f"cow {fmt_t(r['cow'])}")
    if r.get("error"):
        parts.append(f"ERROR {r['error']}")
    return ", ".join(parts)


def _page_reporting_kib():
    """KiB of freed memory this guest has handed back to its host so far
    (virtio-balloon free page reporting), or None without it."""
    try:
        with open("/sys/module/page_reporting/parameters/reported_kib") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def select_specs(args):
    all_specs = specs(args.tiny)
    names = [s.name for s in all_specs]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"bench: unknown target(s) {', '.join(unknown)}; "
                             f"known: {', '.join(names)}")
        chosen = [s for s in all_specs if s.name in wanted]
    elif args.quick:
        chosen = [s for s in all_specs if s.quick]
    else:
        chosen = all_specs
    # the ceiling is measured on the largest random target without huge pages
    plain = [s for s in chosen if s.random and s.thp is not True and not s.threads
             and not s.noreserve]
    if plain:
        max(plain, key=lambda s: s.random).ceiling = True
    return chosen


# --------------------------------------------------------------------------
# the report


def fmt_t(x):
    if x is None:
        return "n/a"
    if x < 0.01:
        return f"{x * 1000:.1f} ms"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


def stat(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def fmt_range(s, f=fmt_t):
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}×" if r >= 0.01 else f"{r:.3f}×"


def summarize(bench):
    """{target: {tool: {metric: stat}}} over the runs without error."""
    out = {}
    for name, facts in bench.targets.items():
        per = {}
        for tool in facts.get("tools", []):
            runs = [r for r in bench.runs if r["target"] == name and r["tool"] == tool]
            ok = [r for r in runs if not r.get("error")]
            m = {"runs": len(runs), "ok": len(ok),
                 "errors": sorted({r["error"] for r in runs if r.get("error")})}
            for key in ("wall", "pause", "self_pause", "in_call_wall", "rss", "rss_main",
                        "rss_guardian", "file_size", "disk", "cow", "gbps", "copy_seconds",
                        "bytes_dumped", "anon_growth", "max_gap", "other_stall"):
                m[key] = stat(r.get(key) for r in ok)
            per[tool] = m
        out[name] = per
    return out


def data_bytes(facts):
    ready = facts.get("ready") or {}
    return ready.get("random_bytes", 0)


def throughput(bytes_, wall_stat):
    if not bytes_ or wall_stat is None:
        return None
    return bytes_ / wall_stat["median"] / 1e9


def thp_granted(facts):
    """(AnonHugePages at the end, random bytes) for a THP target."""
    sm = facts.get("smaps_end") or facts.get("smaps_start") or {}
    return sm.get("AnonHugePages", 0), data_bytes(facts)


def goals(bench, summ):
    """[(status, text)] for the goals of issues 5 and 6."""
    out = []

    def get(target, tool, key):
        s = summ.get(target, {}).get(tool, {}).get(key)
        return s["median"] if s else None

    def add(ok, text):
        out.append(("n/a" if ok is None else "PASS" if ok else "FAIL", text))

    ceiling_name = next((s.name for s in bench.chosen if s.ceiling), None)
    big = next((s.name for s in bench.chosen if s.name == "rand4g"), None)

    # issue 5
    if big:
        w, g = get(big, SNAP, "wall"), get(big, GCORE, "wall")
        r = ratio(w, g)
        add(None if r is None else r <= 0.4,
            f"{bench.targets[big]['title']}: snapcore wall {fmt_t(w)} = {fmt_ratio(r)} "
            f"gcore's {fmt_t(g)} (goal ≤ 0.40×; in-call wall "
            f"{fmt_t(get(big, SNAP, 'in_call_wall'))})")
    else:
        add(None, "4 GiB random: wall ≤ 0.4× gcore: not measured in this run")
    if big and ceiling_name == big:
        b = data_bytes(bench.targets[big])
        tp = throughput(b, summ[big].get(SNAP, {}).get("wall"))
        tp_in = throughput(b, summ[big].get(SNAP, {}).get("in_call_wall"))
        ceil = get(big, CEIL_RW, "gbps")
        r = ratio(tp, ceil)
        add(None if r is None else r >= 0.85,
            f"{bench.targets[big]['title']}: snapcore {tp or 0:.2f} GB/s = "
            f"{(r or 0) * 100:.0f}% of the read+write ceiling {ceil or 0:.2f} GB/s "
            f"(goal ≥ 85%; on the in-call wall: {(ratio(tp_in, ceil) or 0) * 100:.0f}%)")
    else:
        add(None, "4 GiB random: ≥ 85% of the read+write ceiling: not measured in this run")
    name = "zero-untouched"
    if name in summ and GCORE in summ[name]:
        d, g = get(name, SNAP, "disk"), get(name, GCORE, "disk")
        r = ratio(d, g)
        add(None if r is None else r <= 0.55,
            f"50% zero-written, 50% never touched: snapcore disk {human(d)} = "
            f"{fmt_ratio(r)} gcore's {human(g)} (goal ≤ 0.55×)")
    else:
        add(None, "50% never touched: disk ≤ 0.55× gcore: not measured in this run")
    if "reserved64g" in summ and "plain256m" in summ:
        a, b = get("reserved64g", SNAP, "wall"), get("plain256m", SNAP, "wall")
        ai, bi = get("reserved64g", SNAP, "in_call_wall"), get("plain256m", SNAP,
                                                               "in_call_wall")
        r = ratio(a, b)
        add(None if r is None else r <= 2.0,
            f"{bench.targets['reserved64g']['title']}: snapcore wall {fmt_t(a)} = "
            f"{fmt_ratio(r)} the plain {human(data_bytes(bench.targets['plain256m']))} "
            f"target's {fmt_t(b)} (goal ≤ 2×; in-call {fmt_t(ai)} vs {fmt_t(bi)} = "
            f"{fmt_ratio(ratio(ai, bi))})")
    else:
        add(None, "64 GiB reserved within 2× of 256 MiB: not measured in this run")
    main_peaks = [r["rss_main"] for r in bench.runs
                  if r["tool"] in (SNAP, LIVE) and r.get("rss_main") and not r.get("error")]
    guard = [r["rss_guardian"] for r in bench.runs
             if r["tool"] == LIVE and r.get("rss_guardian") and not r.get("error")]
    if main_peaks:
        worst = max(main_peaks + guard)
        text = (f"peak RSS: largest snapcore process {worst / 1e6:.1f} MB over "
                f"{len(main_peaks)} runs (CLI process max {max(main_peaks) / 1e6:.1f} MB"
                + (f", live guardian max {max(guard) / 1e6:.1f} MB; CLI + guardian max "
                   f"{max(r['rss'] for r in bench.runs if r['tool'] == LIVE and r.get('rss')) / 1e6:.1f} MB"
                   if guard else "") + ") (goal ≤ 64 MB, 1 MB = 10^6 bytes)")
        add(worst <= 64e6, text)
    else:
        add(None, "peak RSS ≤ 64 MB: not measured in this run")
    tname = next((s.name for s in bench.chosen if s.threads), None)
    if tname and tname in summ and SNAP in summ[tname]:
        ic, w, p = (get(tname, SNAP, k) for k in ("in_call_wall", "wall", "pause"))
        add(None if ic is None else ic <= 0.5,
            f"{bench.targets[tname]['title']}: frozen and dumped in {fmt_t(ic)} "
            f"(snapcore's in-call wall; target paused {fmt_t(p)}, CLI wall {fmt_t(w)}; "
            f"gcore {fmt_t(get(tname, GCORE, 'wall'))}, paused "
            f"{fmt_t(get(tname, GCORE, 'pause'))}) (goal ≤ 0.5 s)")
    else:
        add(None, "1000 threads frozen and dumped ≤ 0.5 s: not measured in this run")
    # issue 6
    any_live = False
    for s in bench.chosen:
        if LIVE not in summ.get(s.name, {}):
            continue
        any_live = True
        facts = bench.targets[s.name]
        lp = get(s.name, LIVE, "pause")
        gp = get(s.name, GCORE, "pause")
        fork = statistics.median(facts["fork"]) if facts["fork"] else None
        huge, data = thp_granted(facts)
        thp_note = ""
        if s.thp:
            thp_note = f"; AnonHugePages {human(huge)} of {human(data)}"
            if huge < data * 0.9:
                thp_note += " — THP NOT fully granted"
        if lp is None:
            add(None, f"{facts['title']}: live pause not measured")
            continue
        add(None if fork is None else lp <= fork + 0.010,
            f"{facts['title']}: live pause {fmt_t(lp)} (goal ≤ the target's fork() "
            f"{fmt_t(fork)} + 10 ms = {fmt_t(fork + 0.010) if fork is not None else 'n/a'}) "
            f"(snapcore's own count {fmt_t(get(s.name, LIVE, 'self_pause'))}; largest stall "
            f"the target saw outside the freeze {fmt_t(get(s.name, LIVE, 'other_stall'))}; "
            f"copy-on-write window {fmt_t(get(s.name, LIVE, 'cow'))}{thp_note})")
        r = ratio(gp, lp)
        add(None if r is None else r >= 40,
            f"{facts['title']}: live pause {fmt_t(lp)} is {r or 0:.0f}× shorter than "
            f"gcore's {fmt_t(gp)} (goal ≥ 40×)")
    if not any_live:
        add(None, "live pause goals: not measured in this run")
    return out


def markdown(bench, summ, goal_list):
    L = []
    env = bench.env
    L.append("# snapcore benchmark (`make bench`)")
    L.append("")
    L.append(f"{env['started']}, {env['host']}: {env['cpu']}, {env['cores']} cores, "
             f"{human(env['mem_total'])} RAM, kernel {env['kernel']}, THP "
             f"`{env['thp_enabled']}` (defrag `{env['thp_defrag']}`), {env['gdb']}, "
             f"snapcore {env['commit']}.")
    L.append(f"{bench.reps} rep(s) per tool, runs alternating within each target "
             f"({' → '.join(TOOL_ORDER)}, as present, the cycle starting one tool later each "
             f"rep); {bench.cache_note}; cores deleted "
             f"after each run. Load average {bench.load_start[0]:.2f} at the start, "
             f"{bench.load_end[0]:.2f} at the end (the machine is shared: "
             f"{'numbers may be noisy' if max(bench.load_start[0], bench.load_end[0]) > 1.0 else 'it was quiet'}). "
             f"Took {bench.elapsed / 60:.1f} min.")
    L.append("")
    L.append("Wall: the command from exec to exit, median (min–max). Pause: measured by the "
             "target's own heartbeat thread (gaps between its 1 ms ticks): for snapcore the gap "
             "that spans the freeze (snapwrap.py records when Freezer froze and resumed the "
             "target), for gcore the largest gap of the run (gdb holds the target from attach "
             "to detach). Stalls the target saw at other times during a snapcore run are in "
             "the notes. Peak RSS: VmHWM (snapcore live: CLI process + guardian). "
             "Ratios: median ÷ gcore's median on the same target.")
    L.append("")
    L.append("| target | tool | wall | pause | peak RSS | file size | disk | "
             "wall ×gcore | pause ×gcore | disk ×gcore | notes |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in bench.chosen:
        facts = bench.targets.get(s.name, {})
        per = summ.get(s.name, {})
        if facts.get("error") and not per:
            L.append(f"| {s.title} | — | {facts['error']} |  |  |  |  |  |  |  |  |")
            continue
        g = per.get(GCORE, {})
        for tool in facts.get("tools", []):
            m = per[tool]
            notes = []
            if m.get("cow"):
                notes.append(f"cow window {fmt_range(m['cow'])}")
            if m.get("other_stall") and m["other_stall"]["max"] >= 0.005:
                notes.append(f"largest stall outside the freeze {fmt_range(m['other_stall'])}")
            if tool in (SNAP, LIVE) and m.get("self_pause"):
                notes.append(f"self-reported pause {fmt_t(m['self_pause']['median'])}")
            if tool in (SNAP, LIVE) and m.get("in_call_wall"):
                notes.append(f"in-call wall {fmt_t(m['in_call_wall']['median'])}")
            if m.get("gbps"):
                notes.append(f"{m['gbps']['median']:.2f} GB/s")
            elif tool != GCORE and m.get("wall") and s.ceiling:
                tp = throughput(data_bytes(facts), m["wall"])
                notes.append(f"{tp:.2f} GB/s")
            if m["ok"] < m["runs"]:
                notes.append(f"{m['runs'] - m['ok']} of {m['runs']} runs failed: "
                             + "; ".join(m["errors"]))
            rss = "n/a" if m.get("rss") is None else fmt_range(m["rss"], lambda v: f"{v / 1e6:.1f} MB")
            if tool in (CEIL_RW, CEIL_R):
                rss = "—"
            row = [s.title, tool, fmt_range(m.get("wall")), fmt_range(m.get("pause")), rss,
                   human(m["file_size"]["median"]) if m.get("file_size") else "—",
                   human(m["disk"]["median"]) if m.get("disk") else
                   ("0" if m.get("file_size") else "—")]
            for key in ("wall", "pause", "disk"):
                a = m.get(key)
                b = g.get(key)
                row.append(fmt_ratio(ratio(a["median"] if a else None,
                                           b["median"] if b else None))
                           if tool not in (CEIL_RW, CEIL_R) or key == "wall" else "—")
            row.append("; ".join(notes))
            L.append("| " + " | ".join(row) + " |")
        for tool, why in facts.get("skipped", {}).items():
            L.append(f"| {s.title} | {tool} | not run: {why} |  |  |  |  |  |  |  |  |")
    L.append("")
    ceil = next((s for s in bench.chosen if s.ceiling and s.name in summ), None)
    if ceil is not None:
        per = summ[ceil.name]
        b = data_bytes(bench.targets[ceil.name])
        L.append(f"## Ceiling ({bench.targets[ceil.name]['title']}, same run)")
        L.append("")
        rw = per.get(CEIL_RW, {}).get("gbps")
        if rw and rw["n"] > 1:
            L.append(f"The same read+write copy ran at {rw['min']:.2f} to {rw['max']:.2f} GB/s "
                     f"in this run ({rw['max'] / rw['min']:.1f}× apart): that is how much the "
                     f"machine itself varies between identical runs.")
            L.append("")
        L.append("| what | GB/s (median) | % of read+write |")
        L.append("|---|---|---|")
        crw = per.get(CEIL_RW, {}).get("gbps")
        crw = crw["median"] if crw else None
        for tool, label in ((CEIL_R, "process_vm_readv only, 16 MiB chunks"),
                            (CEIL_RW, "process_vm_readv + write(), 16 MiB chunks, one thread")):
            v = per.get(tool, {}).get("gbps")
            if v:
                L.append(f"| {label} | {v['median']:.2f} | "
                         f"{(ratio(v['median'], crw) or 0) * 100:.0f}% |")
        for tool in (SNAP, LIVE, GCORE):
            w = per.get(tool, {}).get("wall")
            tp = throughput(b, w)
            if tp:
                ic = per[tool].get("in_call_wall")
                extra = (f" (in-call: {throughput(b, ic):.2f} GB/s, "
                         f"{(ratio(throughput(b, ic), crw) or 0) * 100:.0f}%)" if ic else "")
                L.append(f"| {tool}: {human(b)} ÷ wall | {tp:.2f}{extra} | "
                         f"{(ratio(tp, crw) or 0) * 100:.0f}% |")
        L.append("")
    live_rows = [s for s in bench.chosen if LIVE in summ.get(s.name, {})]
    if live_rows:
        L.append("## Live mode: pause against the target's own fork()")
        L.append("")
        L.append("Fork: the target's own fork() (the page-table copy), sampled each rep. "
                 "AnonPages growth: the largest rise of the system's AnonPages (/proc/meminfo) "
                 "during a run, sampled every 10 ms: memory that was allocated while the tool "
                 "ran (system-wide, so other work on the machine shows up too).")
        L.append("")
        L.append("| target | fork() in the target | live pause | live: largest other stall | "
                 "normal pause | gcore pause | gcore ÷ live | copy-on-write window | "
                 "AnonPages growth, live | AnonPages growth, normal | AnonHugePages |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for s in live_rows:
            facts = bench.targets[s.name]
            per = summ[s.name]
            fork = stat(facts["fork"])
            lp, np_, gp = (per.get(t, {}).get("pause") for t in (LIVE, SNAP, GCORE))
            huge, _ = thp_granted(facts)
            L.append(f"| {facts['title']} | {fmt_range(fork)} | {fmt_range(lp)} | "
                     f"{fmt_range(per[LIVE].get('other_stall'))} | "
                     f"{fmt_range(np_)} | {fmt_range(gp)} | "
                     f"{fmt_ratio(ratio(gp['median'] if gp else None, lp['median'] if lp else None))} | "
                     f"{fmt_range(per[LIVE].get('cow'))} | "
                     f"{fmt_range(per[LIVE].get('anon_growth'), human)} | "
                     f"{fmt_range(per.get(SNAP, {}).get('anon_growth'), human)} | "
                     f"{human(huge)} |")
        L.append("")
    L.append("## Goals (issues 5 and 6)")
    L.append("")
    for status, text in goal_list:
        L.append(f"- **{status}** {text}")
    L.append("")
    notes = list(bench.notes)
    if bench.reported_start is not None and bench.reported_end is not None and \
            bench.reported_end > bench.reported_start:
        notes.append(f"this VM hands freed memory back to its host (virtio-balloon free page "
                     f"reporting): {human((bench.reported_end - bench.reported_start) * 1024)} "
                     f"during this run. Page cache for a new core then lands on memory the "
                     f"host must fault in again, which makes writes to fresh page cache slow "
                     f"and variable here (for gcore, snapcore and the ceiling alike)")
    for s in bench.chosen:
        facts = bench.targets.get(s.name, {})
        ready = facts.get("ready") or {}
        if facts.get("error"):
            notes.append(f"{s.name}: {facts['error']}")
        if ready:
            notes.append(f"{s.name}: heartbeat {ready.get('heartbeat')}, idle max gap "
                         f"{fmt_t(facts.get('idle_gap'))} over 1 s with no tool running (the noise floor of "
                         f"'pause'); filled in {ready.get('fill_seconds')} s")
        if s.thp and ready:
            huge, data = thp_granted(facts)
            if huge < data * 0.9:
                notes.append(f"{s.name}: transparent huge pages not (fully) granted: "
                             f"AnonHugePages {human(huge)} of {human(data)}")
    L.append("## Notes")
    L.append("")
    for n in notes:
        L.append(f"- {n}")
    L.append("")
    return "\n".join(L)


def environment(bench):
    def read(path, default="?"):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return default

    def sel(text):
        m = re.search(r"\[(\w[\w+]*)\]", text)
        return m.group(1) if m else text

    cpu = "?"
    for line in read("/proc/cpuinfo", "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "snapcore",
                                "csrc"], capture_output=True, text=True, timeout=10).stdout
        commit = (commit or "?") + (" (+ local changes)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    gdb = "?"
    if shutil.which("gdb"):
        try:
            gdb = subprocess.run(["gdb", "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return {
        "started": bench.started, "host": platform.node(), "cpu": cpu,
        "cores": os.cpu_count(), "mem_total": _meminfo().get("MemTotal"),
        "kernel": platform.release(),
        "thp_enabled": sel(read("/sys/kernel/mm/transparent_hugepage/enabled")),
        "thp_defrag": sel(read("/sys/kernel/mm/transparent_hugepage/defrag")),
        "gdb": gdb, "commit": commit, "python": platform.python_version(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the 1 GiB targets only, 1 repetition (a smoke run)")
    p.add_argument("--tiny", action="store_true",
                   help="shrink every target (1 GiB -> 32 MiB etc.), for tests")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="only these targets")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-out"),
                   help="where results.md/results.json go (default bench-out/)")
    p.add_argument("--no-drop-caches", action="store_true",
                   help="sync before each run but leave the page cache alone")
    p.add_argument("--settle", type=float, default=0.0, metavar="SECS",
                   help="before each run, also wait until the guest's free page reporting "
                        "has been idle this long (at most 20 s; default 0: do not wait; "
                        "tried, it cost ~8 s a run and did not make runs steadier here)")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    if args.list:
        for s in specs(args.tiny):
            print(f"{s.name:<16} {s.title}{' (quick)' if s.quick else ''}")
        return 0
    bench = Bench(args)
    bench.setup()
    bench.run()
    bench.env = environment(bench)
    summ = summarize(bench)
    goal_list = goals(bench, summ)
    text = markdown(bench, summ, goal_list)
    with open(os.path.join(bench.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(bench.out, "results.json"), "w") as f:
        json.dump({"environment": bench.env, "reps": bench.reps,
                   "cache": bench.cache_note, "elapsed_seconds": bench.elapsed,
                   "loadavg_start": bench.load_start, "loadavg_end": bench.load_end,
                   "targets": bench.targets, "runs": bench.runs, "summary": summ,
                   "goals": [{"status": s, "text": t} for s, t in goal_list]},
                  f, indent=1, default=str)
    shutil.rmtree(bench.work, ignore_errors=True)
    print()
    print(text)
    print(f"\n[bench] written {os.path.join(bench.out, 'results.md')} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
