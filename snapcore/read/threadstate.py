"""A thread's kernel state as `why` and `info` report it, and its class.

    kernel_of(arch, thread, recorded) -> the thread's "kernel" dict
    classify(kernel) -> (class, timeout)

snapcore's cores carry the kernel's view of each thread (sampled before the
freeze, capture/kstate.py; the system call from the frozen registers,
capture/waits.py).  A core from the kernel or gcore has none of it: its
state reads "?" and the system call comes from the registers in its
NT_PRSTATUS (orig_rax and the argument registers), which every core has.

Classes: "on-cpu" (running or runnable), "sleeping" (in a system call, with or
without a timeout; also a thread sampled runnable whose frozen registers show
it inside a futex wait), "uninterruptible" (D: in the kernel, not killable; see
its kernel stack), "stopped" (job control), "traced" (stopped by a tracer
other than snapcore), "exited", and for cores without the kernel's view
"in-syscall" or "user-code".  `why` marks "snapcore" the threads of a process
that snapshotted itself which were taking the snapshot (whymodel.is_snapcore).
"""

UNKNOWN_STATE = "?"

# system calls whose timeout argument says whether the wait is bounded
WNOHANG = 1
FUTEX_CMD_MASK = 0x7F
FUTEX_WAIT, FUTEX_LOCK_PI, FUTEX_WAIT_BITSET, FUTEX_WAIT_REQUEUE_PI, FUTEX_LOCK_PI2 = (
    0,
    6,
    9,
    11,
    13,
)
ALWAYS_TIMED = frozenset(
    {"nanosleep", "clock_nanosleep", "clock_nanosleep_time64", "restart_syscall"}
)
NEVER_TIMED = frozenset(
    {
        "read",
        "readv",
        "pread64",
        "preadv",
        "preadv2",
        "write",
        "writev",
        "recvfrom",
        "recvmsg",
        "sendto",
        "sendmsg",
        "accept",
        "accept4",
        "connect",
        "pause",
        "rt_sigsuspend",
        "sigsuspend",
        "flock",
        "msgrcv",
        "msgsnd",
        "wait4",
        "waitid",
        "waitpid",
    }
)


def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def timed(call):
    """True if the call has a timeout, False if it waits for good, None if unknown."""
    if call is None:
        return None
    name, a = call["name"], call["args"]
    if name in ALWAYS_TIMED:
        return True
    if name in ("futex", "futex_time64"):
        cmd = a[1] & FUTEX_CMD_MASK
        if cmd in (FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_LOCK_PI, FUTEX_LOCK_PI2):
            return a[3] != 0
        if cmd == FUTEX_WAIT_REQUEUE_PI:
            return a[3] != 0
        return None
    if name == "futex_wait":
        return a[4] != 0
    if name == "poll":
        return _s32(a[2]) >= 0
    if name in ("epoll_wait", "epoll_pwait"):
        return _s32(a[3]) >= 0
    if name in ("ppoll", "ppoll_time64", "epoll_pwait2"):
        return a[2 if name.startswith("ppoll") else 3] != 0
    if name in ("select", "_newselect", "pselect6", "pselect6_time64"):
        return a[4] != 0
    if name in ("rt_sigtimedwait", "rt_sigtimedwait_time64"):
        return a[2] != 0
    if name in ("semtimedop", "semtimedop_time64"):
        return a[3] != 0
    if name in ("io_getevents", "io_pgetevents"):
        return a[4] != 0
    if name in NEVER_TIMED:
        return False
    return None


def _futex_wait(call):
    if call is None:
        return False
    if call["name"] == "futex_wait":
        return True
    if call["name"] in ("futex", "futex_time64"):
        return call["args"][1] & FUTEX_CMD_MASK in (
            FUTEX_WAIT,
            FUTEX_WAIT_BITSET,
            FUTEX_LOCK_PI,
            FUTEX_LOCK_PI2,
            FUTEX_WAIT_REQUEUE_PI,
        )
    return False


def nohang(call):
    """A wait4/waitid that returns at once (WNOHANG): not a wait."""
    if call is None:
        return False
    if call["name"] in ("wait4", "waitpid"):
        return bool(call["args"][2] & WNOHANG)
    if call["name"] == "waitid":
        return bool(call["args"][3] & WNOHANG)
    return False


def kernel_of(arch, thread, recorded):
    """The "kernel" dict of a core thread: the recorded one, or what its registers say."""
    if isinstance(recorded, dict) and recorded.get("state") is not None:
        out = dict(recorded)
        out.setdefault("syscall", None)
        out["source"] = "snapcore"
        return out
    call = None
    if arch is not None and arch.syscall_nr_reg:
        nr, args = arch.syscall_of(thread.regs)
        if nr is not None:
            call = {
                "nr": nr,
                "name": arch.syscall_name(nr) or f"syscall_{nr}",
                "args": args,
                "sp": thread.sp,
                "pc": thread.pc,
            }
    return {
        "state": UNKNOWN_STATE,
        "wchan": None,
        "stack": None,
        "syscall": call,
        "source": "registers",
    }


def classify(kernel):
    """(class, timeout) of a thread from its kernel dict (see the module docstring)."""
    state = kernel.get("state")
    call = kernel.get("syscall")
    tracer = kernel.get("tracer") or 0
    if state in ("Z", "X"):
        return "exited", None
    if state == "t" and tracer:
        return "traced", None
    if state in ("T", "t"):
        return "stopped", None
    if state == "R":
        if _futex_wait(call):
            # runnable a moment before the freeze, inside a futex wait at it: a
            # timed wait that just timed out and went back (the GIL's 5 ms
            # wait does that), or a wake-up that had not returned yet
            return "sleeping", timed(call)
        return "on-cpu", None
    if state == "D":
        return "uninterruptible", timed(call)
    if state in ("S", "I", "P"):
        return "sleeping", timed(call)
    if call is not None:
        return "in-syscall", timed(call)
    return "user-code", None
