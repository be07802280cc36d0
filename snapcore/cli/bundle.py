"""snapcore bundle CORE: a bundle of a core written earlier, with this machine's files.

    snapcore bundle CORE [-o OUT] [--root DIR] [--bundle-max-size SIZE] [-f]

For a core that was taken without --bundle (snapcore's, the kernel's, gcore's;
plain or .zst), on the machine whose files it needs: each file the core maps
is taken from DIR/PATH (default: / ) when its build-id is the one in the
core's memory (a file replaced since is left out, and the manifest says so).
A live process is better served by `snapcore PID --bundle`, which reads the
bytes that were running even if they were deleted since.  Exit status: 0
written; 1 the core cannot be read or the bundle written; 2 usage error.
"""

import os
import sys

from ..bundle.pack import CoreSource, MappedFile, write_bundle
from ..capture.publish import CoreFile
from ..elf.buildid import file_build_id
from ..read.coreinfo import inspect_core
from ..read.source import open_source
from ..units import human
from . import common

PROG = f"{common.PROG} bundle"
INTERRUPTED = "interrupted; no bundle was written"


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Make a bundle (.tar.zst: the core, its executable and libraries, a "
        "manifest) of a core written earlier, with the files of this machine that have the "
        "build-ids the core names.",
        epilog="exit status: 0 written, 1 failed, 2 usage error",
    )
    p.add_argument("core", metavar="CORE", help="a core file (plain or zstd-compressed)")
    p.add_argument("-o", "--output", metavar="OUT", help="the bundle (default: CORE.tar.zst)")
    p.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="take the files from under DIR, e.g. a container's root (default: /)",
    )
    p.add_argument("--bundle-max-size", type=common.size, metavar="SIZE", dest="max_size")
    p.add_argument("-f", "--force", action="store_true", help="replace OUT if it exists")
    return p


def _files(report, root):
    """[MappedFile] of the core's ELF images, each from root when its build-id matches."""
    exe = report["process"]["executable"]
    out = []
    for mod in report["modules"]:
        path = mod["file"].removesuffix(" (deleted)")
        if not path.startswith("/"):
            continue  # [vdso]: in the core itself
        where = os.path.join(root, path.lstrip("/"))
        f = MappedFile(path, -1, 0, mod["build_id"], None, mod["file"] == exe, path != mod["file"])
        try:
            fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            f.left_out = f"not on this machine ({where}: {exc.strerror})"
            out.append(f)
            continue
        here = file_build_id(fd)
        if mod["build_id"] is not None and here != mod["build_id"]:
            os.close(fd)
            f.left_out = f"{where} is another build (build-id {here})"
        else:
            f.fd, f.size, f.source = fd, os.fstat(fd).st_size, where
        out.append(f)
    return out


def _default_output(core):
    base = core[: -len(".zst")] if core.endswith(".zst") else core
    return base + ".tar.zst"


def run(args, argv):
    report = inspect_core(args.core, symbols=False)
    proc = report["process"]
    pid = proc["pid"] or 0
    record = report["snapcore"] or {"pid": pid, "comm": proc["comm"], "producer": "kernel/gcore"}
    files = _files(report, args.root)
    for f in files:
        f.pids = [pid]
    output = args.output or _default_output(args.core)
    out = CoreFile(output, force=args.force)
    source = None
    try:
        source = open_source(args.core)
        core = CoreSource(
            pid=pid,
            fd=-1,
            size=source.size,
            record=record,
            comm=proc["comm"],
            ns_pid=pid,
            executable=next((f.path for f in files if f.executable), None),
            root=args.root,
            files=[f.path for f in files],
            read=source.read_at,
        )
        try:
            summary = write_bundle(out.fd, [core], files, root_pid=pid, max_size=args.max_size)
        except OSError as exc:
            raise out.write_error(exc) from exc
        out.finish()
    except BaseException:
        out.abort()
        raise
    finally:
        if source is not None:
            source.close()
        for f in files:
            if f.fd >= 0:
                os.close(f.fd)
    print(
        f"{output}: the core of pid {pid} ({proc['comm']}) and {summary['files']} files "
        f"({human(summary['binaries_bytes'])}), {human(os.path.getsize(output))} zstd"
    )
    for f in summary["left_out"]:
        print(f"{common.PROG}: warning: {f['path']} left out: {f['why']}", file=sys.stderr)
    return 0
