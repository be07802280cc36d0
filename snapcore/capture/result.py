"""What a snapshot returns: the Snapshot record (the API result and `--json`)."""

from dataclasses import dataclass, field

from ..units import human


@dataclass
class Snapshot:
    """What snapshot() wrote."""

    path: str
    pid: int
    tids: list
    arch: str
    segments: int  # PT_LOAD count
    bytes_dumped: int  # sum of p_filesz
    file_size: int
    bytes_on_disk: int
    wall_time: float  # seconds, whole call
    pause_time: float  # seconds the target was stopped
    mode: str = "normal"  # memory selection: normal, all, mini, max-size
    live: bool = False  # memory was copied from a forked image (live mode)
    fallback: str = None  # why live mode was not used, when it was asked for
    cow_time: float = 0.0  # live: seconds the copy-on-write image lived
    missing: list = field(default_factory=list)  # live: [(start, end, why)] not captured
    unreadable: list = field(default_factory=list)  # [(addr, len, errno)]
    stats: dict = field(default_factory=dict)  # copy counters; "phases": {step: s}
    compressed: str = None  # "zstd": path is a zstandard stream of the core
    core_size: int = 0  # size of the (uncompressed) core
    truncated: bool = False  # max_size dropped memory
    dropped: list = field(default_factory=list)  # [select.Dropped]
    metadata_path: str = None  # the sidecar, when asked for
    metadata: dict = None  # the final SNAPCORE record
    trigger: str = None  # what started it (cli, api, self, tree, run, pytest)
    files: list = field(default_factory=list)  # [collect.MappedRange]: NT_FILE, with inodes
    bundle: dict = None  # --bundle: {files, binaries_bytes, left_out, seconds} (path: the archive)

    def summary(self):
        size = (
            f"{human(self.file_size)} zstd of {human(self.core_size)}"
            if self.compressed
            else f"{human(self.file_size)} ({human(self.bytes_on_disk)} on disk)"
        )
        extra = ""
        if self.mode != "normal":
            extra += f", {self.mode}"
        if self.live:
            extra += ", live"
        if self.truncated:
            extra += f", truncated ({human(sum(d.bytes for d in self.dropped))} dropped)"
        if self.bundle is not None:
            b = self.bundle
            size = f"{human(self.file_size)} bundle (zstd) of a {human(self.core_size)} core"
            extra += f", {b['files']} files ({human(b['binaries_bytes'])})"
            if b["left_out"]:
                extra += f", {len(b['left_out'])} left out (see its bundle.json)"
        return (
            f"{self.path}: pid {self.pid}, {len(self.tids)} thread"
            f"{'s' if len(self.tids) != 1 else ''}, {self.segments} segments, "
            f"{size}{extra} "
            f"in {self.wall_time:.2f}s, target paused {self.pause_time * 1000:.1f} ms"
            + (f" (live mode not used: {self.fallback})" if self.fallback else "")
        )

    def to_json(self):
        """The result as a JSON-ready dict (snapcore --json prints it)."""
        return {
            "path": self.path,
            "pid": self.pid,
            "tids": list(self.tids),
            "arch": self.arch,
            "mode": self.mode,
            "live": self.live,
            "live_fallback": self.fallback,
            "trigger": self.trigger,
            "cow_seconds": round(self.cow_time, 6),
            "missing": [{"start": a, "end": b, "why": w} for a, b, w in self.missing],
            "segments": self.segments,
            "bytes_dumped": self.bytes_dumped,
            "file_size": self.file_size,
            "core_size": self.core_size,
            "bytes_on_disk": self.bytes_on_disk,
            "compressed": self.compressed,
            "wall_seconds": round(self.wall_time, 6),
            "pause_seconds": round(self.pause_time, 6),
            "phases": {k: round(v, 6) for k, v in self.stats.get("phases", {}).items()},
            "truncated": self.truncated,
            "dropped": [d.to_json() for d in self.dropped],
            "unreadable": [{"start": a, "len": n, "errno": e} for a, n, e in self.unreadable],
            "metadata_path": self.metadata_path,
            "bundle": self.bundle,
        }
