"""snapcore: gdb-compatible ELF core dumps of live Linux processes.

    >>> import snapcore
    >>> snap = snapcore.snapshot(pid)                       # writes core.PID, pid runs on
    >>> snap = snapcore.snapshot(pid, "c.zst", mini=True, compress="zstd")
    >>> opts = snapcore.SnapshotOptions(mini=True, metadata=True)
    >>> tree = snapcore.snapshot_tree(pid, "hang/", opts)   # pid and its descendants

The core is the one the kernel would write if the process crashed now (same
segments, notes and bytes), minus the signal; gdb, lldb, elfutils, pystack and
drgn read it.  See docs/python-api.md.
"""

from ._version import __version__
from .capture.request import SnapshotOptions
from .capture.result import Snapshot
from .capture.snapshot import snapshot
from .capture.tree import ProcessResult, TreeSnapshot, snapshot_tree
from .errors import (
    AccessDenied,
    AlreadyTraced,
    CoreFormatError,
    CoreTooLarge,
    HelperError,
    InvalidRequest,
    KernelThread,
    MissingDependency,
    NoSuchProcess,
    OutputError,
    OutputExists,
    ProcFormatError,
    ShimUnavailable,
    SnapcoreError,
    SnapshotCancelled,
    SyscallError,
    TargetError,
    TargetExited,
    ThreadStopTimeout,
    UnsupportedTarget,
    ZombieProcess,
)

__all__ = [
    "snapshot",
    "snapshot_tree",
    "SnapshotOptions",
    "Snapshot",
    "TreeSnapshot",
    "ProcessResult",
    "SnapcoreError",
    "TargetError",
    "NoSuchProcess",
    "TargetExited",
    "ZombieProcess",
    "KernelThread",
    "AccessDenied",
    "AlreadyTraced",
    "UnsupportedTarget",
    "ThreadStopTimeout",
    "OutputError",
    "OutputExists",
    "SnapshotCancelled",
    "SyscallError",
    "ShimUnavailable",
    "CoreTooLarge",
    "MissingDependency",
    "InvalidRequest",
    "HelperError",
    "CoreFormatError",
    "ProcFormatError",
    "__version__",
]
