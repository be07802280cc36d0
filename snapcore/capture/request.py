"""The snapshot request: every option, in one immutable value, validated once.

    SnapshotOptions(mini=True, compress="zstd")      built by the API, the CLI,
        |                                            `snapcore run` and the pytest
        v                                            plugin, never re-spelled
    options.check_path("tree")    refuses, before anything is touched, what
        |                         this path cannot honour (InvalidRequest)
        v
    handed down whole: one process, the caller itself, a tree (every process
    of it), live, and live's fallback to a normal snapshot

Paths (where a request goes) and the options each refuses are the table
``PATH_REFUSALS``; docs/python-api.md shows the same table and a test keeps
the two equal.  Every option not refused on a path takes effect there.
"""

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from .._optional import zstandard
from ..errors import InvalidRequest

COMPRESSORS = ("zstd",)
TRIGGERS = ("cli", "api", "self", "tree", "run", "pytest")
PATHS = ("single", "self", "tree", "live", "run", "pytest")

_TREE_LIVE = (
    "live mode snapshots one process, and a tree is frozen as one instant and "
    "written while frozen; drop --live"
)
# (option, path) -> why the path cannot honour the option
PATH_REFUSALS = {
    ("live", "self"): "the image would have to be forked from the process that waits for "
    "the snapshot; take a normal snapshot of yourself, or a live one from "
    "another process",
    ("live", "tree"): _TREE_LIVE,
    ("live", "run"): _TREE_LIVE,
    ("live", "pytest"): _TREE_LIVE,
    ("force", "pytest"): "each hung test gets a new folder of its own, so there is never "
    "anything to replace",
    ("progress", "self"): "every thread of the process, the one that would report progress "
    "among them, is stopped until the core is written",
}


@dataclass(frozen=True)
class SnapshotOptions:
    """How to take a snapshot; the same value serves every path.

    live            pause the target only while it forks a copy-on-write image of
                    itself, and copy memory from that image; falls back to a normal
                    snapshot when the target does not allow it (Snapshot.fallback)
    stop_timeout    seconds to wait for every thread to stop
    coredump_filter override /proc/PID/coredump_filter (same bits)
    all_mappings    dump every readable mapping whole, like gcore -a
    mini            keep only what backtraces need (stacks, TCBs, ELF headers,
                    the dynamic linker's and the Python runtime's data)
    max_size        keep each core (uncompressed) at most this many bytes: drop the
                    largest regions first, never what mini keeps; marked truncated
    compress        "zstd": stream a zstandard-compressed core (needs zstandard)
    metadata        also write CORE.json beside each core: the metadata record
    force           replace existing files
    reason          free text recorded in the metadata
    trigger         what started the snapshot (cli, api, self, tree, run, pytest);
                    None: set by the entry point
    argv            the command line that asked for it, recorded in the metadata
    buffer_size     bytes per copy buffer; writer_thread: overlap reads and writes
    bundle          write one archive (.tar.zst) instead of a bare core: the core,
                    every mapped file with a build-id and the executable (the bytes
                    that ran), the record and a manifest; snapcore debug opens it.
                    A tree gets one archive, OUTDIR/bundle.tar.zst, beside its
                    cores.  The cores inside are plain (the archive is compressed
                    as a whole), so compress adds nothing to a bundle
    bundle_max_size keep the bundle's files (uncompressed) within this many bytes:
                    the executable first, then the smallest; the rest are listed
                    as left out (needs bundle)
    """

    live: bool = False
    stop_timeout: float = 5.0
    coredump_filter: Optional[int] = None
    all_mappings: bool = False
    mini: bool = False
    max_size: Optional[int] = None
    compress: Optional[str] = None
    metadata: bool = False
    force: bool = False
    reason: Optional[str] = None
    trigger: Optional[str] = None
    argv: Optional[tuple[str, ...]] = None
    buffer_size: int = 4 << 20
    writer_thread: bool = True
    bundle: bool = False
    bundle_max_size: Optional[int] = None

    def __post_init__(self):
        def bad(msg):
            raise InvalidRequest(msg)

        for name in (
            "live",
            "all_mappings",
            "mini",
            "metadata",
            "force",
            "writer_thread",
            "bundle",
        ):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name} must be True or False, not {getattr(self, name)!r}")
        if isinstance(self.stop_timeout, bool) or not isinstance(self.stop_timeout, (int, float)):
            bad(f"stop_timeout must be a number of seconds, not {self.stop_timeout!r}")
        if not self.stop_timeout > 0:
            bad("stop_timeout must be positive")
        if self.coredump_filter is not None and (
            isinstance(self.coredump_filter, bool)
            or not isinstance(self.coredump_filter, int)
            or not 0 <= self.coredump_filter < 1 << 32
        ):
            bad(f"coredump_filter must be a 32-bit mask, not {self.coredump_filter!r}")
        if self.mini and self.all_mappings:
            bad(
                "--mini and --all (mini, all_mappings) exclude each other: mini keeps only "
                "what backtraces need, all dumps every mapping whole"
            )
        if self.max_size is not None and (
            isinstance(self.max_size, bool)
            or not isinstance(self.max_size, int)
            or self.max_size <= 0
        ):
            bad(f"max_size must be a positive number of bytes, not {self.max_size!r}")
        if self.compress is not None and self.compress not in COMPRESSORS:
            bad(f"unknown compressor {self.compress!r} (known: {', '.join(COMPRESSORS)})")
        if self.trigger is not None and self.trigger not in TRIGGERS:
            bad(f"unknown trigger {self.trigger!r} (known: {', '.join(TRIGGERS)})")
        if self.reason is not None and not isinstance(self.reason, str):
            bad(f"reason must be text, not {self.reason!r}")
        if self.argv is not None:
            object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        if (
            isinstance(self.buffer_size, bool)
            or not isinstance(self.buffer_size, int)
            or self.buffer_size < 4096
        ):
            bad(f"buffer_size must be at least 4096 bytes, not {self.buffer_size!r}")
        if self.bundle_max_size is not None:
            if (
                isinstance(self.bundle_max_size, bool)
                or not isinstance(self.bundle_max_size, int)
                or self.bundle_max_size <= 0
            ):
                bad(
                    "bundle_max_size must be a positive number of bytes, not "
                    f"{self.bundle_max_size!r}"
                )
            if not self.bundle:
                bad("--bundle-max-size (bundle_max_size) bounds a bundle: add --bundle")
        if self.compress == "zstd":
            zstandard()  # MissingDependency now, not mid-snapshot
        if self.bundle:
            zstandard("bundles (--bundle)")

    @classmethod
    def of(cls, options=None, **changes):
        """options (or the defaults) with changes applied, validated."""
        if options is None:
            return cls(**changes)
        if not isinstance(options, cls):
            raise InvalidRequest(f"options must be a SnapshotOptions, not {type(options).__name__}")
        return dataclasses.replace(options, **changes) if changes else options

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def mode(self):
        """The memory selection, as the metadata records it."""
        parts = [
            m
            for m, on in (
                ("all", self.all_mappings),
                ("mini", self.mini),
                ("max-size", self.max_size is not None),
            )
            if on
        ]
        return "+".join(parts) or "normal"

    @property
    def suffix(self):
        """What compression adds to a core's default name."""
        return ".zst" if self.compress == "zstd" else ""

    @property
    def output_suffix(self):
        """What the default name of snapshot()'s output ends with: a bundle's, a core's."""
        return ".tar.zst" if self.bundle else self.suffix

    def for_cores(self):
        """The options the cores themselves are written with: a bundle's are plain
        (the archive is compressed as a whole, and gdb reads a plain core in place)."""
        return self.replace(compress=None) if self.bundle and self.compress else self

    def given(self):
        """Names of the options that differ from their defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]

    def check_path(self, path, progress=False):
        """Raise InvalidRequest if this request cannot be honoured on path."""
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}")
        asked = self.given() + (["progress"] if progress else [])
        for name in asked:
            why = PATH_REFUSALS.get((name, path))
            if why is not None:
                raise InvalidRequest(f"{_shown(name)} cannot be used {_PATH_WORDS[path]}: {why}")

    def sidecar(self, core_path):
        """Where the metadata sidecar of core_path goes, or None."""
        return f"{core_path}.json" if self.metadata else None


_PATH_WORDS = {
    "single": "here",
    "self": "on the calling process itself",
    "tree": "with --tree",
    "live": "in live mode",
    "run": "with snapcore run",
    "pytest": "in the pytest plugin",
}


def _shown(name):
    return {"all_mappings": "--all", "coredump_filter": "--filter", "progress": "progress"}.get(
        name, "--" + name.replace("_", "-")
    )


def path_table():
    """The option x path table as Markdown (docs/python-api.md shows this text).

    yes: takes effect; refused: InvalidRequest / exit 2 before anything is
    touched; -: not offered there (progress is a callback of the Python API).
    """
    names = [
        f.name
        for f in dataclasses.fields(SnapshotOptions)
        if f.name not in ("trigger", "argv", "buffer_size", "writer_thread")
    ]
    names.append("progress")
    rows = ["| option | " + " | ".join(PATHS) + " |", "|---|" + "---|" * len(PATHS)]
    for name in names:
        cells = [
            "refused"
            if (name, p) in PATH_REFUSALS
            else "-"
            if name == "progress" and p in ("run", "pytest")
            else "yes"
            for p in PATHS
        ]
        rows.append(f"| `{_shown(name)}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def default_core_name(pid, options):
    return f"core.{pid}{options.suffix}"


def resolve_path(pid, path, options):
    """The output's path: path as given, or core.PID[.zst|.tar.zst] in the current directory."""
    if path is None:
        return f"core.{pid}{options.output_suffix}"
    return os.fspath(path)
