"""Freezing and resuming every thread of a target with PTRACE_SEIZE.

PTRACE_SEIZE + PTRACE_INTERRUPT stop a thread without sending it SIGSTOP, so
nothing is queued that could leave the target stopped: if snapcore dies, the
kernel detaches its tracees and they simply run on.  All ptrace calls of one
snapshot are made from one OS thread (the tracer thread, see
``tracer.run_traced``); when that thread ends the kernel detaches whatever it still
traces, which is the last line of defence behind ``Freezer.resume``.

The freeze (after CRIU's compel and gdb):
  1. list /proc/PID/task, SEIZE and INTERRUPT every tid not seen before;
  2. wait (bounded) until each of them reports a stop, or has exited;
  3. repeat until a listing finds no new tid: stopped threads cannot create
     threads, so this ends once every running thread has been caught.
A thread whose first stop is a signal-delivery-stop took a signal during the
freeze; the signal is handed back on detach.  A thread in a job-control stop
(the process was SIGSTOPped) reports a group-stop and returns to it on detach.
"""

import errno
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

from .. import _native
from ..errors import (
    AccessDenied,
    AlreadyTraced,
    NoSuchProcess,
    SnapcoreError,
    SnapshotCancelled,
    TargetExited,
    ThreadStopTimeout,
    UnsupportedTarget,
)
from ..procfs import is_own_thread, list_tids, read_stat, read_status, tracer_process

_JOB_CONTROL = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
MAX_SCANS = 64
PF_EXITING = 0x4  # include/linux/sched.h: the task is on its way out (flags in /proc stat)


class Unstable(Exception):
    """The freeze did not hold (an exec replaced the threads, ...); try again."""


@dataclass
class FrozenThread:
    tid: int
    status: int
    deliver_sig: int = 0  # signal to hand back on detach
    group_stop: bool = False  # the thread was in a job-control stop
    held: list = field(default_factory=list)  # [(sig, siginfo)] taken during an injection


def describe_stop(status):
    """Classify a waitpid status of a seized thread: (kind, sig).

    kind is "exited", "interrupt", "group-stop", "signal" or "event".
    """
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        return "exited", 0
    if not os.WIFSTOPPED(status):
        return "event", 0
    sig = os.WSTOPSIG(status)
    event = status >> 16
    if event == _native.PTRACE_EVENT_STOP:
        return ("group-stop" if sig in _JOB_CONTROL else "interrupt"), sig
    if event == 0:
        return "signal", sig
    return "event", sig


class Freezer:
    """Stops all threads of ``pid``; ``resume()`` lets them all go again."""

    def __init__(self, pid, stop_timeout=5.0, cancel=None):
        self.pid = pid
        self.stop_timeout = stop_timeout
        self.cancel = cancel
        self.seized = []  # tids we are attached to, stopped or not
        self.ever_seized = set()  # (forgotten ones too)
        self._adopted = []  # seized under another tid (see _adopt_renamed)
        self.threads = {}  # tid -> FrozenThread, stopped ones
        self.frozen_at = None
        self.resumed_at = None
        self.stops_probed = 0  # stops found by _probe_stolen: taken by another waiter
        self._noreap = pid if _is_parent_of(pid) else 0

    # -- freeze ------------------------------------------------------------
    def freeze(self):
        deadline = time.monotonic() + self.stop_timeout
        if self.frozen_at is None:
            self.frozen_at = time.monotonic()
        seen = set(self.seized)  # threads held before (see hold())
        for _ in range(MAX_SCANS):
            try:
                tids = list_tids(self.pid)
            except NoSuchProcess:
                raise TargetExited(self.pid) from None
            new = [t for t in tids if t not in seen]
            if self.pid in self.ever_seized and not self._still_ours(self.pid):
                # the leader we hold is gone and its tid taken by a thread that
                # exec'd: the threads we hold belong to a program no longer there
                raise Unstable(f"process {self.pid} exec'd while it was being frozen")
            if not new:
                break
            seen.update(new)
            with _ExitReaper(self):
                batch = [t for t in new if self._seize(t)]
            batch += self._adopted
            seen.update(self._adopted)
            self._adopted = []
            self._wait_stopped(batch, deadline)
            self._check_cancel()
        else:
            raise UnsupportedTarget(
                self.pid,
                f"process {self.pid} kept creating threads "
                f"through {MAX_SCANS} scans of its task list",
            )
        if not self.threads:
            if has_live_task(self.pid):
                raise Unstable("no thread could be stopped, yet the process lives (exec?)")
            raise TargetExited(self.pid)
        return [self.threads[t] for t in sorted(self.threads)]

    def hold(self, tids, keep=None):
        """Stop just these threads of the process, before (maybe) freeze().

        ``keep(tid)`` is asked about each stopped thread; those it refuses are
        let go again at once.  Returns the tids held.  freeze() later stops
        the remaining threads and leaves these as they are.
        """
        deadline = time.monotonic() + self.stop_timeout
        if self.frozen_at is None:
            self.frozen_at = time.monotonic()
        with _ExitReaper(self):
            batch = [t for t in tids if t not in self.seized and self._seize(t)]
        self._wait_stopped(batch, deadline)
        held = []
        for tid in batch:
            ft = self.threads.get(tid)
            if ft is None:
                continue
            if keep is None or keep(tid):
                held.append(tid)
                continue
            try:
                _native.detach(tid, ft.deliver_sig)
            except _native.SyscallError:
                pass
            self._forget(tid)
        return held

    def _check_cancel(self):
        if self.cancel is not None and self.cancel.is_set():
            raise SnapshotCancelled()

    def _seize(self, tid):
        for attempt in range(4):
            try:
                _native.seize(tid)
                break
            except _native.SyscallError as exc:
                if exc.errno == errno.ESRCH:
                    return False  # exited since the listing
                if exc.errno != errno.EPERM:
                    raise
                if not self._eperm_is_transient(tid):
                    return False  # a zombie thread: nothing to stop
                if self.seized:
                    # other threads were seizable a moment ago: an exec is
                    # replacing the threads (its credentials lock refuses us)
                    raise Unstable(f"seizing thread {tid} was refused mid-freeze")
                time.sleep(0.005 * (attempt + 1))
        else:
            raise AccessDenied(self.pid, "ptrace(PTRACE_SEIZE) was refused (EPERM)")
        self.seized.append(tid)
        self.ever_seized.add(tid)
        try:
            _native.interrupt(tid)
        except _native.SyscallError as exc:
            if exc.errno != errno.ESRCH:
                raise
            self._adopt_renamed()
        return True

    def _still_ours(self, tid):
        """False only if tid is a live thread that we do not trace (any more)."""
        try:
            if read_status(self.pid, tid).tracer_pid == threading.get_native_id():
                return True
        except SnapcoreError:
            return True  # gone: the process is exiting, not replaced
        return exiting(self.pid, tid)

    def _adopt_renamed(self):
        """A thread gone right after we attached to it may have been renamed, not
        killed: an exec by a thread other than the leader gives the execing thread
        the leader's tid.  Whatever thread we trace but do not know is taken in, and
        stopped like the others (else it would stay traced, and running)."""
        me = threading.get_native_id()
        try:
            tids = list_tids(self.pid)
        except NoSuchProcess:
            return
        for t in tids:
            if t in self.threads:
                continue  # stopped, and known as what it is
            try:
                if read_status(self.pid, t).tracer_pid != me:
                    continue
                _native.interrupt(t)  # (the tid may be one we seized as another thread)
            except (SnapcoreError, _native.SyscallError):
                continue
            if t not in self.seized:
                self.seized.append(t)
                self._adopted.append(t)

    def _eperm_is_transient(self, tid):
        """After EPERM: False for a thread that is gone, dead or exiting (the kernel
        refuses to attach to those: a process killed, or an exec replacing its
        threads); raise if traced by another."""
        try:
            st = read_status(self.pid, tid)
        except SnapcoreError:
            return False  # gone
        if exiting(self.pid, tid):
            return False
        if st.tracer_pid and not is_own_thread(st.tracer_pid):
            tracer, comm = tracer_process(st.tracer_pid)
            raise AlreadyTraced(self.pid, tracer, comm)
        return True

    def _wait_stopped(self, tids, deadline):
        statuses = [_native.WAIT_PENDING] * len(tids)
        pending = len(tids)
        while pending:
            remaining = deadline - time.monotonic()
            # wait in slices so that a cancel request is noticed promptly
            pending = _native.wait_many(
                tids, statuses, max(0.0, min(remaining, 0.05)), self._noreap
            )
            if pending:
                found = self._probe_stolen(tids, statuses)
                self.stops_probed += found
                pending -= found
                # Threads frozen in earlier rounds report nothing more unless
                # they die (SIGKILL): reap those, or the dead traced threads
                # keep a dying leader from ever reporting its exit.
                self._reap_frozen()
                if not self.threads and not has_live_task(self.pid):
                    break  # the whole process is gone
            if pending and time.monotonic() >= deadline:
                stuck = [t for t, s in zip(tids, statuses) if s == _native.WAIT_PENDING]
                raise ThreadStopTimeout(self.pid, stuck, self.stop_timeout)
            self._check_cancel()
        for tid, status in zip(tids, statuses):
            if status in (_native.WAIT_GONE, _native.WAIT_PENDING):  # pending: process gone
                self._forget(tid)
                continue
            kind, sig = describe_stop(status)
            if kind == "exited":
                self._forget(tid)
            elif kind == "signal":
                self.threads[tid] = FrozenThread(tid, status, deliver_sig=sig)
            else:
                self.threads[tid] = FrozenThread(tid, status, group_stop=kind == "group-stop")

    def _reap_frozen(self):
        old = list(self.threads)
        if not old:
            return
        statuses = [_native.WAIT_PENDING] * len(old)
        _native.wait_many(old, statuses, 0, self._noreap)
        for tid, status in zip(old, statuses):
            if status == _native.WAIT_GONE or (
                status != _native.WAIT_PENDING and describe_stop(status)[0] == "exited"
            ):
                self._forget(tid)

    def _probe_stolen(self, tids, statuses):
        """Find threads that stopped but whose stop someone else collected.

        Any thread of the tracer's process may collect a tracee's ptrace stop
        with waitpid(): a thread of ours blocked in waitpid() on a child we
        trace (subprocess.Popen.wait()) takes it first, and the stop never
        reaches us.  PTRACE_GETSIGINFO succeeds only on a stopped tracee, and
        its siginfo tells which stop it is.  Returns how many were found.
        """
        found = 0
        for i, tid in enumerate(tids):
            if statuses[i] != _native.WAIT_PENDING:
                continue
            try:
                info = _native.getsiginfo(tid)
            except _native.SyscallError as exc:
                if exc.errno == errno.EINVAL:  # a group-stop without siginfo
                    statuses[i] = (signal.SIGSTOP << 8) | 0x7F | (_native.PTRACE_EVENT_STOP << 16)
                    found += 1
                continue  # ESRCH: running, keep waiting
            signo, _errno, code = struct.unpack_from("<iii", info)
            if code >> 8 == _native.PTRACE_EVENT_STOP:
                statuses[i] = ((code & 0xFFFF) << 8) | 0x7F
            else:
                statuses[i] = (signo << 8) | 0x7F  # a signal-delivery-stop
            found += 1
        return found

    def _forget(self, tid):
        if tid in self.seized:
            self.seized.remove(tid)
        self.threads.pop(tid, None)

    # -- resume ------------------------------------------------------------
    def resume(self):
        """Detach every thread, handing back held signals.  Never raises.

        A thread that was seized but never reported its stop cannot be
        detached (ptrace needs it stopped); it is detached by the kernel when
        the tracer thread exits (see tracer.run_traced).  Returns the tids that could
        not be detached here.
        """
        left = []
        for tid in list(self.seized):
            ft = self.threads.get(tid)
            try:
                if ft is not None and ft.held:
                    detach_with(tid, ft.held)
                else:
                    _native.detach(tid, ft.deliver_sig if ft else 0)
            except _native.SyscallError as exc:
                if exc.errno != errno.ESRCH:
                    left.append(tid)
                elif ft is None:
                    left.append(tid)  # running, not stopped: kernel detaches
            except Exception:
                left.append(tid)
        self.seized = []
        self.threads = {}
        self.resumed_at = time.monotonic()
        return left

    @property
    def pause_seconds(self):
        if self.frozen_at is None:
            return 0.0
        end = self.resumed_at if self.resumed_at is not None else time.monotonic()
        return end - self.frozen_at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.resume()


class _ExitReaper:
    """While the tracer thread seizes threads, reap those it already traces that exit.

    PTRACE_SEIZE waits for the target's cred_guard_mutex, which an exec holds from
    its start; the exec then kills the other threads and waits until each is
    released, and a traced thread that dies is released only when its tracer reaps
    it.  A tracer blocked in PTRACE_SEIZE while a thread it traces dies that way
    would wait for ever (and the exec with it).  Any thread of the tracer's process
    may reap its tracees, so this one does, every few milliseconds, exits only,
    and never the group leader (an exec waits only for it to be a zombie, and its
    parent may be us).  It peeks first (WNOWAIT) and reaps only an exit: the kernel
    reports a tracee's ptrace stops to any wait, WEXITED alone or not ("we see
    ptrace'd stopped tasks regardless of options", kernel/exit.c), and a stop taken
    here would reach the tracer only through _probe_stolen, a wait slice later.
    """

    EXITS = (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED)

    PERIOD = 0.002
    WALL = 0x40000000  # __WALL: threads too

    def __init__(self, freezer):
        self.freezer = freezer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapcore-reaper", daemon=True)

    def _run(self):
        pid = self.freezer.pid
        while not self._stop.wait(self.PERIOD):
            for tid in list(self.freezer.seized):
                if tid == pid:
                    continue
                try:
                    seen = os.waitid(
                        os.P_PID, tid, os.WEXITED | os.WNOHANG | os.WNOWAIT | self.WALL
                    )
                    if seen is not None and seen.si_code in self.EXITS:
                        os.waitid(os.P_PID, tid, os.WEXITED | os.WNOHANG | self.WALL)
                except (ChildProcessError, OSError):
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def detach_with(tid, held):
    """Detach tid handing back held signals: the first with its exact siginfo
    (PTRACE_SETSIGINFO, so si_pid/si_value survive), any others re-sent to the
    process (rare: several signals during one injected call)."""
    if not held:
        _native.detach(tid, 0)
        return
    sig, info = held[0]
    _native.setsiginfo(tid, info)
    _native.detach(tid, sig)
    for sig, _ in held[1:]:
        try:
            os.kill(read_status(tid).tgid, sig)
        except (OSError, SnapcoreError):
            pass


def exiting(pid, tid):
    """True if the thread is gone, dead, or exiting (PF_EXITING: killed, or replaced
    by an exec), though its state may still read R or D."""
    try:
        st = read_stat(pid, tid)
    except SnapcoreError:
        return True
    return st.state in ("Z", "X", "x") or bool(st.flags & PF_EXITING)


def has_live_task(pid):
    try:
        tids = list_tids(pid)
    except NoSuchProcess:
        return False
    return any(not exiting(pid, tid) for tid in tids)


def dying(pid, timeout=1.0):
    """After ESRCH from ptrace on a thread we had stopped: True once every thread of
    pid is exiting or gone (the process was killed); False if some thread still
    lives after ``timeout`` (a killed thread sets PF_EXITING only when it runs)."""
    deadline = time.monotonic() + timeout
    while has_live_task(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _is_parent_of(pid):
    try:
        return read_status(pid).ppid == os.getpid()
    except SnapcoreError:
        return False
