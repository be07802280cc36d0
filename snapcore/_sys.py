"""prctl(2) calls snapcore needs outside the ptrace shim (through libc, via ctypes).

set_ptracer(pid)        PR_SET_PTRACER: let pid trace us under Yama ptrace_scope=1
set_pdeathsig(sig)      PR_SET_PDEATHSIG: get sig when our parent thread exits
set_child_subreaper()   PR_SET_CHILD_SUBREAPER: orphaned descendants become our children
unshare_fs()            unshare(CLONE_FS): the calling thread gets its own root and cwd
"""

import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PTRACER = 0x59616D61  # "Yama"
CLONE_FS = 0x00000200

_libc = None


def _prctl(option, arg):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if (
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option:#x}): {os.strerror(err)}")


def yama_scope():
    """kernel.yama.ptrace_scope, or None without Yama."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def set_ptracer(pid):
    """Allow pid (and its descendants) to ptrace this process under Yama scope 1.

    Returns True if the call was made.  It is only needed, and only made, when
    Yama is in scope 1 ("restricted": only ancestors may trace).  It replaces
    any ptracer this process declared before; the kernel forgets it when
    ``pid`` exits.
    """
    if yama_scope() != 1:
        return False
    _prctl(PR_SET_PTRACER, pid)
    return True


def set_pdeathsig(sig):
    _prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper():
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def unshare_fs():
    """unshare(CLONE_FS) for the calling thread: from now on its chroot() and
    chdir() change only its own root and cwd (os.unshare needs Python 3.12)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.unshare(ctypes.c_int(CLONE_FS)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
