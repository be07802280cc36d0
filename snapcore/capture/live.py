"""Live snapshots: make the frozen target fork a copy-on-write image of itself.

While every thread is frozen, one thread that sits in a system call is made
to execute one more ``syscall`` instruction: ``clone(CLONE_FILES)`` with exit
signal 0.  The kernel copies the page tables (the whole cost of the pause:
~50 ms for 4 GiB of 4 KiB pages, a few ms with huge pages); the child is born
traced and stopped (PTRACE_O_TRACECLONE) and never runs a single instruction
of the target.  The thread's registers are put back and the target resumes
at once, while snapcore copies memory out of the child, a frozen image of the
target at the freeze instant.  Then the child is killed, and a second tiny
injection (``wait4(child, NULL, __WALL|WNOHANG)``) has the target reap it.

The sequence and its pitfalls are in shared/reference/live-fork.md; the ones
that shape this code:
  * registers are restored only at the single-step SIGTRAP stop that follows
    the syscall, and all of them (``syscall`` clobbers rcx and r11);
  * from the clone event stop the thread continues with SINGLESTEP, never
    CONT or DETACH, or it would run on with the injected registers;
  * signals that reach the thread during the injection are held and handed
    back on detach (the single-step SIGTRAP is never passed on);
  * PTRACE_O_EXITKILL is set on the child only, never on the target; the
    child is also given a stack pointer of 1 (``newsp``), so that in the
    microseconds before EXITKILL is set a child released by a dying snapcore
    faults on its first stack access instead of running the target's code;
  * CLONE_FILES shares the fd table, so the child holds no extra references
    (a pipe's EOF or a flock release is not delayed by it);
  * the target is left alone when it has a seccomp filter (a kill filter
    would kill it), is 32-bit, or has no thread blocked in a syscall: live
    mode then falls back to a normal snapshot and says so.
"""

import errno
import os
import signal
import time

from .. import _native, procfs, procmaps
from ..elf.structs import NT_PRSTATUS
from ..errors import LiveUnavailable, NoSuchProcess, SnapcoreError, TargetExited
from .copy import Copier
from .freeze import detach_with, exiting
from .plan import NONE, PRELOADED, READ, BackingFiles, plan_dump, read_memory

CLONE_VM = 0x100
CLONE_FILES = 0x400
WNOHANG = 1
__WALL = 0x40000000
PF_IO_WORKER = 0x10
INJECT_TIMEOUT = 60.0  # the clone of a huge process can take a while


def check_live_possible(pid, status, arch, frozen):
    """Raise LiveUnavailable with the reason live mode cannot be used."""
    if not arch.syscall_insn:
        raise LiveUnavailable(f"live mode is not supported for {arch.name} targets")
    if status.seccomp:
        raise LiveUnavailable(
            "the target has a seccomp filter (an injected clone could be refused or kill it)"
        )
    if any(ft.group_stop for ft in frozen):
        raise LiveUnavailable("the target is stopped (SIGSTOP): it does not run anyway")


def choose_thread(pid, arch, threads, frozen):
    """The thread to inject into: stopped inside a system call, at a `syscall`.

    ``threads`` are ThreadNotes (registers), ``frozen`` the FrozenThreads.
    """
    by_tid = {ft.tid: ft for ft in frozen}
    candidates = []
    for t in threads:
        ft = by_tid.get(t.tid)
        if ft is None or ft.deliver_sig or ft.group_stop:
            continue
        regs = arch.regs(t.regset(NT_PRSTATUS))
        orig = regs[arch.syscall_nr_reg]
        if orig >= 1 << 63:  # -1: not in a system call
            continue
        try:
            if procfs.read_stat(pid, t.tid).flags & PF_IO_WORKER:
                continue
        except SnapcoreError:
            continue
        rip = regs[arch.pc_reg]
        if (
            read_memory(pid, rip - len(arch.syscall_insn), len(arch.syscall_insn))
            != arch.syscall_insn
        ):
            continue
        candidates.append(t.tid)
    if not candidates:
        raise LiveUnavailable("no thread of the target is blocked in a system call")
    return candidates[0]


class Injection:
    """One injected system call on one stopped thread; restores it on every path."""

    def __init__(self, tid, arch, saved_regs):
        self.tid = tid
        self.arch = arch
        self.saved = saved_regs  # bytes, restored at the end
        self.held = []  # [(sig, siginfo bytes)] to hand back
        self.event_msg = None

    def run(self, nr, args, options=0, want_event=None):
        """Execute syscall nr(args...) in the thread; return its result (rax).

        With want_event (a PTRACE_EVENT_*), the event's message (e.g. the new
        child's pid) is kept in ``event_msg``.
        """
        arch = self.arch
        regs = arch.regs(self.saved)
        regs[arch.pc_reg] -= len(arch.syscall_insn)
        regs[arch.syscall_ret_reg] = nr
        regs[arch.syscall_nr_reg] = -1
        for name, value in zip(arch.syscall_arg_regs, args):
            regs[name] = value
        tid = self.tid
        if options:
            _native.setoptions(tid, options)
        _native.setregset(tid, NT_PRSTATUS, arch.pack_regs(regs))
        result = None
        try:
            _native.singlestep(tid, 0)
            deadline = time.monotonic() + INJECT_TIMEOUT
            while True:
                status = self._wait(deadline)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    raise TargetExited(tid)
                sig = os.WSTOPSIG(status)
                event = status >> 16
                if want_event is not None and event == want_event:
                    self.event_msg = _native.geteventmsg(tid)
                    _native.singlestep(tid, 0)  # never CONT/DETACH from here
                    continue
                if event == 0 and sig == signal.SIGTRAP:
                    now = arch.regs(_native.getregset(tid, NT_PRSTATUS))
                    result = now[arch.syscall_ret_reg]
                    if result >= 1 << 63:
                        result -= 1 << 64
                    break  # the single-step trap after the syscall
                if event == 0:
                    # a signal arrived meanwhile: hold it, hand it back on detach
                    self.held.append((sig, _native.getsiginfo(tid)))
                _native.singlestep(tid, 0)
        finally:
            # back to exactly the frozen state, whatever happened
            try:
                _native.setregset(tid, NT_PRSTATUS, self.saved)
                if options:
                    _native.setoptions(tid, 0)
            except _native.SyscallError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        return result

    def _wait(self, deadline):
        statuses = [_native.WAIT_PENDING]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LiveUnavailable(f"thread {self.tid} did not finish the injected call")
            if _native.wait_many([self.tid], statuses, min(left, 0.25)) == 0:
                if statuses[0] == _native.WAIT_GONE:
                    raise TargetExited(self.tid)
                return statuses[0]
            if exiting(self.tid, self.tid):
                # killed meanwhile: a group leader's exit is reported only once its
                # other threads are reaped, which they cannot be while we wait here
                raise TargetExited(self.tid)


def inject_clone(arch, tid, saved_regs):
    """Fork the frozen target from thread tid; return (child_pid, held signals).

    Raises LiveUnavailable if the clone failed (the target is unaffected).
    """
    inj = Injection(tid, arch, saved_regs)
    rc = inj.run(
        arch.nr_clone,
        (CLONE_FILES, 1, 0, 0, 0),
        options=_native.PTRACE_O_TRACECLONE,
        want_event=_native.PTRACE_EVENT_CLONE,
    )
    child = inj.event_msg
    if child is None or rc <= 0:
        if rc is not None and rc > 0:  # a child without an event: never let it run
            try:
                os.kill(rc, signal.SIGKILL)
            except OSError:
                pass
        err = -rc if rc is not None and rc < 0 else 0
        raise_unavailable = LiveUnavailable(
            f"the injected clone failed ({os.strerror(err) if err else 'no child'})"
        )
        raise_unavailable.held = inj.held
        raise raise_unavailable
    return child, inj.held


def fork_away(arch, first):
    """Fork the image ``first`` (a child of the target) once more; return the grandchild.

    The target must reap its exit-signal-0 child itself, which only an injected
    wait4 can make it do.  So the target's own child lives for milliseconds:
    it forks a second image (exit signal SIGCHLD, so not the target's to reap)
    and is then killed and reaped at once.  The second image is orphaned to init
    (or the nearest subreaper), which reaps it like any child, so a snapcore
    killed while it copies leaves nothing behind in the target.  Both images are
    traced from birth and never run the target's code, and both share the
    target's fd table (CLONE_FILES): an image holds no reference of its own to
    the target's files, so a pipe's EOF or a lock's release is never delayed by
    the seconds a large copy takes.

    The second image shares the first one's memory (CLONE_VM; it is a process of
    its own all the same, with its own exit signal and parent): the clone copies
    no page tables, and the first image's exit frees nothing, since its mm lives
    on in the second.  1 GiB of 4 KiB pages: a plain fork here took 17 ms and the
    first image's exit 20 ms more (its mm's teardown); with CLONE_VM the hand-off
    takes about 1 ms.  The one teardown left is the second image's, at dispose().
    """
    saved = _native.getregset(first, NT_PRSTATUS)
    inj = Injection(first, arch, saved)
    rc = inj.run(
        arch.nr_clone,
        (CLONE_VM | CLONE_FILES | signal.SIGCHLD, 1, 0, 0, 0),
        options=_native.PTRACE_O_TRACEFORK | _native.PTRACE_O_EXITKILL,
        want_event=_native.PTRACE_EVENT_FORK,
    )
    if inj.event_msg is None:
        raise LiveUnavailable(
            f"the image could not fork ({os.strerror(-rc) if rc and rc < 0 else 'no child'})"
        )
    return inj.event_msg


def adopt_child(child):
    """The child is ours (traced, stopped): EXITKILL it and make it the OOM victim."""
    statuses = [_native.WAIT_PENDING]
    _native.wait_many([child], statuses, 10.0)
    if statuses[0] in (_native.WAIT_PENDING, _native.WAIT_GONE):
        raise LiveUnavailable("the forked image did not report its first stop")
    _native.setoptions(child, _native.PTRACE_O_EXITKILL)
    try:
        with open(f"/proc/{child}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def kill_child(child):
    """SIGKILL the image and collect its exit as its tracer (it stays the target's zombie)."""
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        return
    statuses = [_native.WAIT_PENDING]
    deadline = time.monotonic() + 10
    while statuses[0] == _native.WAIT_PENDING and time.monotonic() < deadline:
        _native.wait_many([child], statuses, 0.25)


def reap_in_target(pid, arch, child, prefer_tid=None, timeout=3.0):
    """Have the target wait4() its dead exit-signal-0 child.  Returns True if reaped.

    Stops one thread at a time (the others keep running) until one sits at a
    `syscall`; the pause is that of one injected wait4, well under a millisecond.
    Retries for a few seconds when no thread can be had (e.g. another snapshot
    holds the target right now).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            tids = procfs.list_tids(pid)
        except SnapcoreError:
            return True  # target gone: init reaps the child
        for tid in sorted(tids, key=lambda t: t != prefer_tid)[:16]:
            if _reap_from(pid, arch, child, tid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _reap_from(pid, arch, child, tid):
    """Inject wait4(child) through thread tid if it can be stopped at a syscall."""
    try:
        _native.seize(tid)
    except _native.SyscallError:
        return False  # gone, or traced by someone else
    attached = True
    try:
        _native.interrupt(tid)
        statuses = [_native.WAIT_PENDING]
        _native.wait_many([tid], statuses, 2.0)
        if statuses[0] in (_native.WAIT_PENDING, _native.WAIT_GONE):
            return False
        if (statuses[0] >> 16) != _native.PTRACE_EVENT_STOP:
            _native.detach(tid, os.WSTOPSIG(statuses[0]))  # a signal: give it back
            attached = False
            return False
        saved = _native.getregset(tid, NT_PRSTATUS)
        regs = arch.regs(saved)
        if (
            regs[arch.syscall_nr_reg] >= 1 << 63
            or read_memory(pid, regs[arch.pc_reg] - len(arch.syscall_insn), len(arch.syscall_insn))
            != arch.syscall_insn
        ):
            return False
        inj = Injection(tid, arch, saved)
        rc = inj.run(arch.nr_wait4, (child, 0, WNOHANG | __WALL, 0))
        detach_with(tid, inj.held)
        attached = False
        return rc == child or rc == -errno.ECHILD
    except SnapcoreError:  # SyscallError, TargetExited, LiveUnavailable
        return False
    finally:
        if attached:
            try:
                _native.detach(tid, 0)
            except _native.SyscallError:
                pass  # never stopped: detached when we exit


# ---------------------------------------------------------------------------
# the image, as a snapshot uses it


def nofork_vmas(pid):
    """Before the freeze: the VMAs a fork leaves out (MADV_DONTFORK, VmFlags dc) or
    wipes (MADV_WIPEONFORK, wf).  Live mode copies them from the frozen target."""
    try:
        return {
            (v.start, v.end): v
            for v in procmaps.read_smaps(pid)
            if "dc" in v.vmflags or "wf" in v.vmflags
        }
    except NoSuchProcess:
        raise TargetExited(pid) from None


def fork_image(pid, freezer, frozen, threads, arch, nofork, options):
    """While frozen: copy what fork won't, inject the clone.

    Returns the Image, or (None, why) when live mode cannot be used on this
    target: the caller then takes a normal snapshot and records why.
    """
    try:
        check_live_possible(pid, procfs.read_status(pid), arch, frozen)
        tid = choose_thread(pid, arch, threads, frozen)
    except LiveUnavailable as exc:
        return None, str(exc).split("; ")[0]
    image = Image(pid)
    try:
        image.preload(nofork, arch, options.coredump_filter, options.buffer_size)
        saved = next(t for t in threads if t.tid == tid).regset(NT_PRSTATUS)
        try:
            child, held = inject_clone(arch, tid, saved)
        except LiveUnavailable as exc:
            freezer.threads[tid].held = getattr(exc, "held", [])
            image.dispose()
            return None, str(exc).split("; ")[0]
        freezer.threads[tid].held = held
        image.first = child
        image.inject_tid = tid
        image.arch = arch
        adopt_child(child)
        image.born = time.monotonic()
    except BaseException:
        image.dispose()
        raise
    return image, None


class Image:
    """A live snapshot's forked copy-on-write image of the target, and what
    had to be taken from the target itself while it was frozen."""

    def __init__(self, pid):
        self.pid = pid
        self.first = None  # the target's own child: reaped as soon as possible
        self.child = None  # the image memory is read from (the first's child)
        self.inject_tid = None
        self.arch = None
        self.born = None
        self.lifetime = 0.0
        self.scratch = -1
        self.preloaded = {}  # (start, end) -> (VmaPlan, scratch offset)
        self.frozen = []  # the target's VMAs (maps) while frozen
        self.missing = []

    def preload(self, nofork, arch, filt, bufsize):
        """While frozen: read /proc/PID/maps (cheap) and copy the nofork VMAs."""
        pid = self.pid
        self.frozen = procmaps.read_maps(pid)
        todo = [nofork[(v.start, v.end)] for v in self.frozen if (v.start, v.end) in nofork]
        if not todo:
            return
        filt = filt if filt is not None else procfs.read_coredump_filter(pid)
        self.scratch = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        with BackingFiles(pid) as files:
            plans = plan_dump(
                pid, todo, filt, procmaps.map_files_ranges(pid), files, arch.page_size
            )
            offsets, off = [], 0
            for p in plans:
                offsets.append(off)
                off += p.filesz
            copier = Copier(pid, self.scratch, bufsize, writer_thread=False)
            try:
                copier.run(plans, offsets)
            finally:
                copier.close()
        for p, o in zip(plans, offsets):
            if p.fill == READ:
                # its bytes are in the scratch file now: the copy reads them from there
                p.fill, p.backing_fd, p.backing_base = PRELOADED, self.scratch, o
            self.preloaded[(p.vma.start, p.vma.end)] = (p, o)

    def vmas(self):
        try:
            return procmaps.read_smaps(self.child)
        except NoSuchProcess:
            raise TargetExited(self.pid) from None

    def plan(self, filt, file_ranges, files, page_size, all_mappings=False):
        """Plans for the image's VMAs, with the nofork VMAs put back in place."""
        vmas = self.vmas()
        in_child = {(v.start, v.end) for v in vmas}
        plans = []
        for v in vmas:
            hit = self.preloaded.get((v.start, v.end))
            if hit is not None:
                plans.append(hit[0])
            else:
                if "wf" in v.vmflags:
                    self.missing.append(
                        (v.start, v.end, "MADV_WIPEONFORK, set during the snapshot")
                    )
                plans.extend(
                    plan_dump(
                        self.child,
                        [v],
                        filt,
                        file_ranges,
                        files,
                        page_size,
                        all_mappings=all_mappings,
                    )
                )
        for v in self.frozen:
            key = (v.start, v.end)
            if key in in_child:
                continue
            hit = self.preloaded.get(key)
            if hit is not None:
                plans.append(hit[0])
            else:
                # left out by fork and not known before the freeze: a PT_LOAD
                # with no data, reported as missing
                self.missing.append((v.start, v.end, "MADV_DONTFORK, set during the snapshot"))
                p = plan_dump(self.pid, [v], 0, set(), files, page_size)[0]
                p.filesz, p.fill, p.why = 0, NONE, "left out by fork"
                plans.append(p)
        plans.sort(key=lambda p: p.vma.start)  # address order; [vsyscall] is last
        return plans

    def hand_off(self):
        """After the target resumed: move the image out of the target's children.

        The first image forks the one we read from, then is killed and reaped
        by the target (see fork_away).
        """
        self.child = fork_away(self.arch, self.first)
        adopt_child(self.child)
        self._drop_first()

    def _drop_first(self):
        if self.first is not None:
            kill_child(self.first)
            reap_in_target(self.pid, self.arch, self.first, self.inject_tid)
            self.first = None

    def dispose(self):
        """Kill the images (the target reaps its own), drop the scratch file."""
        self._drop_first()
        if self.child is not None:
            kill_child(self.child)  # orphaned: init reaps it
            self.child = None
        if self.born is not None:
            self.lifetime = time.monotonic() - self.born
        if self.scratch >= 0:
            os.close(self.scratch)
            self.scratch = -1
