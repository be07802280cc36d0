"""snapcore: gdb-compatible ELF core dumps of live Linux processes.

    >>> import snapcore
    >>> snap = snapcore.snapshot(pid)            # writes core.PID, pid runs on
    >>> snap.path, snap.pause_time
    >>> tree = snapcore.snapshot_tree(pid, "hang/")  # pid and its descendants, + manifest.json

The core is the one the kernel would write if the process crashed now (same
segments, notes and bytes), minus the signal; gdb, lldb, elfutils, pystack and
drgn read it.  See README.md.
"""
from .errors import (AccessDenied, AlreadyTraced, CoreTooLarge, KernelThread, MissingDependency,
                     NoSuchProcess, OutputError, OutputExists, ShimUnavailable, SnapcoreError,
                     SnapshotCancelled,
                     SyscallError, TargetError, TargetExited, ThreadStopTimeout,
                     UnsupportedTarget, ZombieProcess)
from ._version import __version__
from .snapshot import Snapshot, snapshot
from .tree import ProcessResult, TreeSnapshot, snapshot_tree

__all__ = [
    "snapshot", "Snapshot", "snapshot_tree", "TreeSnapshot", "ProcessResult",
    "SnapcoreError", "TargetError", "NoSuchProcess", "TargetExited",
    "ZombieProcess", "KernelThread", "AccessDenied", "AlreadyTraced", "UnsupportedTarget",
    "ThreadStopTimeout", "OutputError", "OutputExists", "SnapshotCancelled", "SyscallError",
    "ShimUnavailable", "CoreTooLarge", "MissingDependency", "__version__",
]
