"""An installed snapcore takes a snapshot a reader accepts: the check a fresh install must pass.

    python .ci/smoke.py OUTDIR        (with the python of the environment under test)

Run outside the source tree, so that ``import snapcore`` is the installed
package.  It starts ``sleep 600``, snapshots it with the ``snapcore`` console
script of this environment, and checks, with readers other than snapcore:

    pyelftools   an ET_CORE for this machine; PT_NOTE first; one NT_PRSTATUS
                 holding sleep's pid; NT_FILE lists sleep's executable; the
                 SNAPCORE note records this snapcore's version
    gdb          the backtrace of sleep ends in libc's nanosleep (skipped
                 without gdb, unless SNAPCORE_REQUIRE_ORACLES=1)
    /proc        sleep still runs: not stopped, TracerPid 0

and that ``snapcore manpage`` and ``snapcore completion bash`` work.  Used by
.ci/check-dist (sdist and wheel) and by cibuildwheel's test-command.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

from elftools.elf.elffile import ELFFile

import snapcore

NT_PRSTATUS = 1
PRSTATUS_PID_OFFSET = 32  # struct elf_prstatus: pr_info (12), pr_cursig + pad, 2 sigsets


def fail(message):
    print(f"smoke: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def console_script():
    exe = os.path.join(os.path.dirname(sys.executable), "snapcore")
    if not os.access(exe, os.X_OK):
        fail(f"no console script {exe}")
    return exe


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    state = re.search(r"^State:\s+(\S)", text, re.M).group(1)
    tracer = int(re.search(r"^TracerPid:\s+(\d+)", text, re.M).group(1))
    return state, tracer


def check_core(path, pid, exe):
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.header["e_type"] != "ET_CORE" or elf.header["e_machine"] != "EM_X86_64":
            fail(f"{path}: not an x86_64 core ({elf.header['e_type']}, {elf.header['e_machine']})")
        segs = list(elf.iter_segments())
        if segs[0]["p_type"] != "PT_NOTE" or len(segs) < 2:
            fail(f"{path}: PT_NOTE is not first, or there is no PT_LOAD")
        notes = list(segs[0].iter_notes())
    prstatus = [n for n in notes if n["n_type"] == "NT_PRSTATUS"]
    if len(prstatus) != 1:
        fail(f"{path}: {len(prstatus)} NT_PRSTATUS notes for a 1-thread process")
    desc = prstatus[0]["n_desc"]
    desc = desc if isinstance(desc, bytes) else bytes(desc, "latin-1")
    (got_pid,) = struct.unpack_from("<i", desc, PRSTATUS_PID_OFFSET)
    if got_pid != pid:
        fail(f"{path}: NT_PRSTATUS pid {got_pid}, not {pid}")
    (file_note,) = [n for n in notes if n["n_type"] == "NT_FILE"]
    if os.fsencode(exe) not in file_note["n_desc"]["filename"]:
        fail(f"{path}: NT_FILE does not list {exe}")
    meta = [n for n in notes if n["n_name"] == "SNAPCORE"]
    if len(meta) != 1:
        fail(f"{path}: {len(meta)} SNAPCORE notes")
    desc = meta[0]["n_desc"]
    desc = desc if isinstance(desc, bytes) else desc.encode("latin-1")
    record = json.loads(desc.decode().strip())
    if record["snapcore"] != snapcore.__version__ or record["pid"] != pid:
        fail(f"{path}: SNAPCORE note says {record['snapcore']} pid {record['pid']}")


def check_gdb(path, exe):
    if shutil.which("gdb") is None:
        if os.environ.get("SNAPCORE_REQUIRE_ORACLES") == "1":
            fail("gdb is not installed (SNAPCORE_REQUIRE_ORACLES=1)")
        print("smoke: gdb not installed, its check skipped")
        return
    p = run(["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "bt", exe, path])
    if not re.search(r"^#0 .*\bclock_nanosleep|^#0 .*\bnanosleep", p.stdout, re.M):
        fail(f"gdb's backtrace of {path} is not in nanosleep:\n{p.stdout}{p.stderr}")


def main():
    outdir = os.path.abspath(sys.argv[1])
    os.makedirs(outdir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(snapcore.__file__))
    if not here.startswith(sys.prefix + os.sep):
        fail(f"snapcore imported from {here}, not from the environment {sys.prefix}")
    cli = console_script()
    p = run([cli, "--version"])
    if p.stdout != f"snapcore {snapcore.__version__}\n":
        fail(f"snapcore --version said {p.stdout!r}")
    sleep = subprocess.Popen(["sleep", "600"])
    try:
        exe = os.path.realpath(f"/proc/{sleep.pid}/exe")
        deadline = time.monotonic() + 10
        while proc_status(sleep.pid)[0] != "S":  # in nanosleep, not still exec'ing
            if time.monotonic() > deadline:
                fail("sleep did not start")
            time.sleep(0.01)
        core = os.path.join(outdir, "core.sleep")
        p = run([cli, str(sleep.pid), "-o", core, "--force"])
        if p.returncode != 0:
            fail(f"snapcore {sleep.pid} exited {p.returncode}: {p.stderr}")
        if sleep.poll() is not None or proc_status(sleep.pid) != ("S", 0):
            fail(f"sleep does not run on after the snapshot: {proc_status(sleep.pid)}")
        check_core(core, sleep.pid, exe)
        check_gdb(core, exe)
    finally:
        sleep.kill()
        sleep.wait()
    for args, want in (
        (["manpage"], ".TH SNAPCORE 1"),
        (["completion", "bash"], "-F _snapcore snapcore"),
    ):
        p = run([cli, *args])
        if p.returncode != 0 or want not in p.stdout:
            fail(f"snapcore {' '.join(args)} exited {p.returncode}: {p.stderr}")
    print(
        f"smoke: ok: snapcore {snapcore.__version__} from {here} "
        f"(Python {sys.version.split()[0]}), core of sleep read by pyelftools and gdb"
    )


if __name__ == "__main__":
    main()
