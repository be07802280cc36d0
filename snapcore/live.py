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

from . import _native, procfs
from .elf.structs import NT_PRSTATUS
from .errors import SnapcoreError, TargetExited
from .memory import read_memory
from .tracer import detach_with

CLONE_FILES = 0x400
WNOHANG = 1
__WALL = 0x40000000
PF_IO_WORKER = 0x10
INJECT_TIMEOUT = 60.0            # the clone of a huge process can take a while


class LiveUnavailable(SnapcoreError):
    """Live mode cannot be used on this target; the snapshot falls back to normal mode."""


def check_live_possible(pid, status, arch, frozen):
    """Raise LiveUnavailable with the reason live mode cannot be used."""
    if not arch.syscall_insn:
        raise LiveUnavailable(f"live mode is not supported for {arch.name} targets")
    if status.seccomp:
        raise LiveUnavailable("the target has a seccomp filter (an injected clone could "
                              "be refused or kill it)")
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
        orig = regs["orig_rax"]
        if orig >= 1 << 63:                       # -1: not in a system call
            continue
        try:
            if procfs.read_stat(pid, t.tid).flags & PF_IO_WORKER:
                continue
        except SnapcoreError:
            continue
        rip = regs["rip"]
        if read_memory(pid, rip - len(arch.syscall_insn), len(arch.syscall_insn)) != \
                arch.syscall_insn:
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
        self.saved = saved_regs                  # bytes, restored at the end
        self.held = []                           # [(sig, siginfo bytes)] to hand back
        self.event_msg = None

    def run(self, nr, args, options=0, want_event=None):
        """Execute syscall nr(args...) in the thread; return its result (rax).

        With want_event (a PTRACE_EVENT_*), the event's message (e.g. the new
        child's pid) is kept in ``event_msg``.
        """
        arch = self.arch
        regs = arch.regs(self.saved)
        regs["rip"] -= len(arch.syscall_insn)
        regs["rax"] = nr
        regs["orig_rax"] = -1
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
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
                    _native.singlestep(tid, 0)   # never CONT/DETACH from here
                    continue
                if event == 0 and sig == signal.SIGTRAP:
                    now = arch.regs(_native.getregset(tid, NT_PRSTATUS))
                    result = now["rax"]
                    if result >= 1 << 63:
                        result -= 1 << 64
                    break                        # the single-step trap after the syscall
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


def inject_clone(arch, tid, saved_regs):
    """Fork the frozen target from thread tid; return (child_pid, held signals).

    Raises LiveUnavailable if the clone failed (the target is unaffected).
    """
    inj = Injection(tid, arch, saved_regs)
    rc = inj.run(arch.nr_clone, (CLONE_FILES, 1, 0, 0, 0),
                 options=_native.PTRACE_O_TRACECLONE,
                 want_event=_native.PTRACE_EVENT_CLONE)
    child = inj.event_msg
    if child is None or rc <= 0:
        if rc is not None and rc > 0:            # a child without an event: never let it run
            try:
                os.kill(rc, signal.SIGKILL)
            except OSError:
                pass
        err = -rc if rc is not None and rc < 0 else 0
        raise_unavailable = LiveUnavailable(
            f"the injected clone failed ({os.strerror(err) if err else 'no child'})")
        raise_unavailable.held = inj.held
        raise raise_unavailable
    return child, inj.held


def fork_away(arch, first):
    """Fork the image ``first`` (a child of the target) once more; return the grandchild.

    The target must reap its exit-signal-0 child itself, which only an injected
    wait4 can make it do.  So the target's own child lives for milliseconds:
    it forks a second image (a plain fork, exit signal SIGCHLD) and is then
    killed and reaped at once.  The second image is orphaned to init (or the
    nearest subreaper), which reaps it like any child, so a snapcore killed
    while it copies leaves nothing behind in the target.  Both images are
    traced from birth and never run the target's code.
    """
    saved = _native.getregset(first, NT_PRSTATUS)
    inj = Injection(first, arch, saved)
    rc = inj.run(arch.nr_clone, (signal.SIGCHLD, 1, 0, 0, 0),
                 options=_native.PTRACE_O_TRACEFORK | _native.PTRACE_O_EXITKILL,
                 want_event=_native.PTRACE_EVENT_FORK)
    if inj.event_msg is None:
        raise LiveUnavailable(f"the image could not fork ({os.strerror(-rc) if rc and rc < 0 else 'no child'})")
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
            return True                           # target gone: init reaps the child
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
        return False                              # gone, or traced by someone else
    attached = True
    try:
        _native.interrupt(tid)
        statuses = [_native.WAIT_PENDING]
        _native.wait_many([tid], statuses, 2.0)
        if statuses[0] in (_native.WAIT_PENDING, _native.WAIT_GONE):
            return False
        if (statuses[0] >> 16) != _native.PTRACE_EVENT_STOP:
            _native.detach(tid, os.WSTOPSIG(statuses[0]))   # a signal: give it back
            attached = False
            return False
        saved = _native.getregset(tid, NT_PRSTATUS)
        regs = arch.regs(saved)
        if regs["orig_rax"] >= 1 << 63 or read_memory(
                pid, regs["rip"] - len(arch.syscall_insn),
                len(arch.syscall_insn)) != arch.syscall_insn:
            return False
        inj = Injection(tid, arch, saved)
        rc = inj.run(arch.nr_wait4, (child, 0, WNOHANG | __WALL, 0))
        detach_with(tid, inj.held)
        attached = False
        return rc == child or rc == -errno.ECHILD
    except SnapcoreError:                         # SyscallError, TargetExited, LiveUnavailable
        return False
    finally:
        if attached:
            try:
                _native.detach(tid, 0)
            except _native.SyscallError:
                pass                              # never stopped: detached when we exit


# ---------------------------------------------------------------------------
# Self-write: the image writes its own memory into the core.
#
# Reading the image costs a copy through /proc/PID/mem (a bounce page per 4 KiB,
# ~2.7 GB/s here; process_vm_readv would pin, and so unshare, every
# copy-on-write page).  An injected pwrite64 has the image's own kernel
# thread copy its pages straight into the core's page cache: one copy, no
# pin, nothing unshared, and the target's memory is not touched (the image
# has its own copy of the target's fd table and its own page tables; one
# scratch page is mapped in the image for the path and unmapped again).
#
# Measured, and not wired in (docs/performance.md, "Live mode"): on the 2-vCPU
# test VM the overlapped /proc/PID/mem copy (the C loop's writer thread) was as
# fast or faster.  The image's one big pwrite makes the page cache use large
# folios, whose memory this VM first has to fault back in from its host (free
# page reporting): 0.27-1.5 s of CPU per GiB, varying run to run; cut into
# 2 MiB or 256 KiB calls it costs 512 or 4096 injected system calls per GiB
# (0.7-0.9 s and 1.1-1.5 s per GiB).  Keep it for hosts where that is not so.
# How it must be called (on the tracer thread, which traces the image):
#
#     runs, rest, rest_off = split_for_self_write(image_pid, plans, offsets)
#     copier = Copier(image_pid, core_fd, ..., use_readv=False)
#     t = threading.Thread(target=copier.run, args=(rest, rest_off))  # small runs,
#     t.start()                                   # PROT_NONE VMAs, backing files
#     try:
#         with ImageWriter(arch, image_pid, core_fd) as w:   # opens the core in the image
#             w.write_runs(runs, cancel)                     # the C loop, meanwhile
#     finally:
#         t.join()
#         copier.close()
#
# The image must be stopped and traced by this thread, and alive until the
# last write returned; if open() raises LiveUnavailable, copy everything with
# the C loop instead.  Pages the image writes that hold only zeros become data
# (the kernel's own core does the same); the C loop leaves them as holes.
#
# The writes run in the image, so they are accounted where the image is: open()
# first gives it a session of its own (setsid: out of the target's process
# group and, with sched autogroup, out of its CPU share) and moves it into this
# process's cgroups where it may (memory: the core's page cache; cpu; io), so
# that the copy is not charged to the target's limits.

# System call numbers the self-write needs (arch facts: they belong in
# arch/x86_64.py next to nr_clone and nr_wait4 once this is wired in).
_SELF_WRITE_NR = {"x86_64": {"mmap": 9, "munmap": 11, "openat": 257, "pwrite64": 18,
                             "close": 3, "setsid": 112}}
_AT_FDCWD = -100
_PROT_READ_WRITE = 3
_MAP_PRIVATE_ANONYMOUS = 0x22
_O_WRONLY_CLOEXEC = 0o1 | 0o2000000
_MAX_RW = 0x7ffff000              # the most one write() moves (MAX_RW_COUNT)
SELF_WRITE_MIN_RUN = 1 << 20      # smaller runs cost more to inject than to copy
_U64 = (1 << 64) - 1


class ImageWriter:
    """Injected system calls in the stopped, traced image: open the core, pwrite runs."""

    def __init__(self, arch, image, out_fd, owner_pid=None):
        nr = _SELF_WRITE_NR.get(arch.name)
        if nr is None or not arch.syscall_insn:
            raise LiveUnavailable(f"self-write is not supported for {arch.name} images")
        self.nr = nr
        self.arch = arch
        self.image = image
        self.out_fd = out_fd
        self.owner_pid = owner_pid or os.getpid()
        self.fd = -1
        self.calls = 0
        self.bytes = 0
        self._inj = None

    def _call(self, name, *args):
        if self._inj is None:
            self._inj = Injection(self.image, self.arch,
                                  _native.getregset(self.image, NT_PRSTATUS))
        self.calls += 1
        return self._inj.run(self.nr[name], tuple(a & _U64 for a in args))

    def open(self):
        """Open our core fd in the image through /proc/OWNER/fd/N."""
        self._call("setsid")                      # its own session: see the note above
        self.cgroups_moved = move_to_our_cgroups(self.image)
        path = f"/proc/{self.owner_pid}/fd/{self.out_fd}".encode() + b"\0"
        page = self._call("mmap", 0, 4096, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS, -1, 0)
        if page < 0:
            raise LiveUnavailable(f"mmap in the image failed ({os.strerror(-page)})")
        try:
            mem = os.open(f"/proc/{self.image}/mem", os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(mem, path, page)
            finally:
                os.close(mem)
            fd = self._call("openat", _AT_FDCWD, page, _O_WRONLY_CLOEXEC, 0)
        finally:
            self._call("munmap", page, 4096)
        if fd < 0:
            raise LiveUnavailable(f"the image could not open the core ({os.strerror(-fd)})")
        self.fd = fd
        return fd

    def write(self, addr, length, off):
        """pwrite64(fd, addr, length, off) in the image, until all is written."""
        done = 0
        while done < length:
            n = min(length - done, _MAX_RW)
            rc = self._call("pwrite64", self.fd, addr + done, n, off + done)
            if rc == -errno.EINTR:
                continue
            if rc < 0:
                raise OSError(-rc, f"pwrite64 in the image at {addr + done:#x}: "
                                   f"{os.strerror(-rc)}")
            if rc == 0:
                raise OSError(errno.EIO, "pwrite64 in the image wrote nothing")
            done += rc
        self.bytes += done
        return done

    def write_runs(self, runs, cancel=None):
        """Write [(addr, length, file_off)]; stops early (SnapshotCancelled) on cancel."""
        for addr, length, off in runs:
            if cancel is not None and cancel.is_set():
                from .errors import SnapshotCancelled
                raise SnapshotCancelled()
            self.write(addr, length, off)
        return self.bytes

    def close(self):
        if self.fd >= 0:
            try:
                self._call("close", self.fd)
            except (SnapcoreError, _native.SyscallError):
                pass                              # the image is killed next anyway
            self.fd = -1

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


def _cgroup_mounts():
    """{controller or "": mount point} from /proc/self/mounts ("" is cgroup2)."""
    out = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                _dev, mnt, fstype, opts = line.split()[:4]
                if fstype == "cgroup2":
                    out.setdefault("", mnt)
                elif fstype == "cgroup":
                    for opt in opts.split(","):
                        out.setdefault(opt, mnt)
    except OSError:
        pass
    return out


def move_to_our_cgroups(pid):
    """Best effort: move pid into each cgroup this process is in.  Returns how many
    hierarchies took it (0 without permission, which is not an error)."""
    mounts = _cgroup_mounts()
    moved = 0
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in lines:
        _hid, ctrls, path = line.split(":", 2)
        if ctrls.startswith("name="):
            continue
        key = ctrls.split(",")[0] if ctrls else ""
        mnt = mounts.get(key)
        if mnt is None:
            continue
        try:
            with open(os.path.join(mnt, path.lstrip("/"), "cgroup.procs"), "w") as f:
                f.write(str(pid))
            moved += 1
        except OSError:
            pass
    return moved


def resident_runs(pagemap_fd, start, end):
    """[(start, end)] of the pages in [start, end) that hold data: present or swapped,
    not the shared zero page (PAGEMAP_SCAN)."""
    out = []
    pos = start
    while pos < end:
        regions, walk_end = _native.pagemap_scan(pagemap_fd, pos, end)
        for a, b, cat in regions:
            if cat & 32:                          # SC_PAGE_IS_PFNZERO: a hole
                continue
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        if walk_end <= pos:
            break
        pos = walk_end
    return out


def split_for_self_write(image, plans, offsets, min_run=SELF_WRITE_MIN_RUN, share=1.0,
                         page_size=4096):
    """Split the copy between the image and the C loop.

    Returns (runs, rest_plans, rest_offsets): runs [(addr, length, file_off)] are
    resident runs of at least min_run bytes in readable, non-special VMAs that
    the image writes itself, at most ``share`` of their bytes (the C loop, on
    another CPU, copies the rest of them meanwhile); the rest (small runs,
    everything else) stays with the C loop as pieces of the plans (same VMA,
    same flags, file offsets kept).
    """
    import dataclasses

    from .memory import PRELOADED, READ
    try:
        pm = os.open(f"/proc/{image}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return [], list(plans), list(offsets)
    todo = []                                     # (plan, offset, [(a, b)] for the image)
    try:
        for p, off in zip(plans, offsets):
            if not p.filesz or p.fill not in (READ, PRELOADED):
                continue
            v = p.vma
            big = []
            if p.fill == READ and not v.special and v.readable:
                end = p.start + p.filesz
                big = [(a, b) for a, b in resident_runs(pm, p.start, end) if b - a >= min_run]
            todo.append((p, off, big))
    except _native.SyscallError:
        return [], list(plans), list(offsets)       # no PAGEMAP_SCAN: all to the C loop
    finally:
        os.close(pm)
    budget = share * sum(b - a for _, _, big in todo for a, b in big)
    runs, rest, rest_off = [], [], []
    for p, off, big in todo:
        end = p.start + p.filesz
        taken = []
        for a, b in big:
            if budget <= 0:
                break
            if b - a > budget:
                b = max(a, a + int(budget) // page_size * page_size)
            budget -= b - a
            if b > a:
                taken.append((a, b))
        pos = p.start
        for a, b in taken + [(end, end)]:
            if a > pos:                           # the C loop keeps what lies between
                rest.append(dataclasses.replace(p, start=pos, end=p.end if a == end else a,
                                                filesz=a - pos))
                rest_off.append(off + (pos - p.start))
            if b > a:
                runs.append((a, b - a, off + (a - p.start)))
            pos = b
    return runs, rest, rest_off
