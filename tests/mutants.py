"""Mutants: deliberate faults a user would care about, each of which the suite must catch.

    python tests/mutants.py [NAME ...]        (make mutants)

Each mutant is data: a file of snapcore, a piece of its text that must occur
exactly once, and what to put instead.  The runner copies the tree to a scratch
directory once, checks that the fidelity and reader tests pass there, then for
each mutant restores the pristine file, applies the mutant, and runs those
tests, most discriminating first, stopping at the first failure (pytest -x):

    prstatus-wrong-pid           killed by tests/fidelity/test_kernel_diff.py::...
    ...

It exits non-zero if any mutant survives, or if an anchor is not found exactly
once (then the mutant no longer describes snapcore and must be updated:
tests/unit/test_mutants.py checks this on every run of the suite).  The scratch
copy is imported through PYTHONPATH, which comes before the editable install of
the venv; no .pyc is written, so no stale bytecode survives an edit.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the tree's root
    old: str  # must occur exactly once
    new: str
    why: str  # what a user would see
    first: tuple = field(default=())  # tests to run before the default order


MUTANTS = (
    Mutant(
        "prstatus-wrong-pid",
        "snapcore/elf/notes.py",
        "            tid=t.note_tid,\n",
        "            tid=t.note_tid + (t is self.threads[1]),\n",
        "the second thread's NT_PRSTATUS names another thread",
    ),
    Mutant(
        "thread-note-missing",
        "snapcore/elf/notes.py",
        "        self.arch, self.proc, self.threads = arch, proc, threads\n",
        "        self.arch, self.proc, self.threads = arch, proc, threads[:-1] or threads\n",
        "the last thread is missing from the core",
    ),
    Mutant(
        "registers-swapped",
        "snapcore/elf/notes.py",
        "            regs=regs,\n",
        "            regs=regs[8:16] + regs[:8] + regs[16:],\n",
        "r15 and r14 swapped in every thread",
    ),
    Mutant(
        "xstate-byte-flipped",
        "snapcore/capture/collect.py",
        "                    notes.append((ntype, owner, data))\n",
        "                    notes.append((ntype, owner, data if ntype != 0x202 else "
        "data[:200] + bytes([data[200] ^ 1]) + data[201:]))\n",
        "one byte of each thread's XSAVE area (an XMM register) wrong",
    ),
    Mutant(
        "page-zeroed",
        "snapcore/capture/copy.py",
        "        trailer = layout.trailer_block()\n"
        "        if trailer is not None:\n"
        "            out.write_at(trailer[1], trailer[0])\n",
        "        big = max((p for p in plans if p.fill == READ and p.filesz),\n"
        "                  key=lambda p: p.filesz)\n"
        "        base = layout.offsets[plans.index(big)]\n"
        "        for o in range(0, big.filesz, 4096):\n"
        "            if any(os.pread(out.fd, 4096, base + o)):\n"
        "                out.write_at(bytes(4096), base + o)\n"
        "                break\n"
        "        trailer = layout.trailer_block()\n"
        "        if trailer is not None:\n"
        "            out.write_at(trailer[1], trailer[0])\n",
        "the first page that holds data in the largest dumped region reads as zeros",
    ),
    Mutant(
        "load-offset-off-by-a-page",
        "snapcore/elf/layout.py",
        "            elf.pack_phdr_into(buf, at, PT_LOAD, ld.flags, off, ld.vaddr, ld.filesz,"
        " ld.memsz, page)\n",
        "            elf.pack_phdr_into(buf, at, PT_LOAD, ld.flags, off + page * (ld is "
        "self.loads[min(2, len(self.loads) - 1)]), ld.vaddr, ld.filesz, ld.memsz, page)\n",
        "the third PT_LOAD's p_offset points one page past its data",
    ),
    Mutant(
        "segment-flags-wrong",
        "snapcore/capture/plan.py",
        "        return pflags(v.readable, v.writable, v.executable)\n",
        '        return pflags(v.readable, v.writable and v.name != "[stack]", v.executable)\n',
        "the stack's PT_LOAD is not writable",
    ),
    Mutant(
        "nt-file-missing-a-mapping",
        "snapcore/capture/collect.py",
        "        if not name:\n            continue\n",
        '        if not name or name.endswith("/libc.so.6"):\n            continue\n',
        "NT_FILE leaves out libc's mappings",
    ),
    Mutant(
        "auxv-entry-wrong",
        "snapcore/capture/collect.py",
        "        auxv=auxv,\n",
        "        auxv=auxv[:8] + bytes([auxv[8] ^ 0x10]) + auxv[9:],\n",
        "the first NT_AUXV entry (the vDSO's address) is wrong",
    ),
    Mutant(
        "coredump-filter-ignored",
        "snapcore/capture/job.py",
        "        return procfs.read_coredump_filter(self.pid) if filt is None else filt\n",
        "        return 0x33 if filt is None else filt\n",
        "the target's /proc/PID/coredump_filter is not read",
    ),
    Mutant(
        "madv-dontdump-ignored",
        "snapcore/capture/plan.py",
        '    if "dd" in flags:\n',
        '    if "dd" in flags and False:\n',
        "MADV_DONTDUMP memory is dumped",
    ),
    Mutant(
        "mapping-at-wrong-file-offset",
        "snapcore/capture/copy.py",
        "            s.file_off = off\n",
        "            s.file_off = off + 4096 * (p is next(q for q, _ in todo if q.filesz > 4096))"
        "\n",
        "the first copied region of several pages is written one page later in the file",
    ),
    Mutant(
        "psargs-nuls-kept",
        "snapcore/elf/notes.py",
        'return argv_area[:79].replace(b"\\0", b" ")',
        'return argv_area[:79].replace(b"\\0", b"\\0")',
        "pr_psargs stops at the first argument",
    ),
    Mutant(
        "current-thread-not-first",
        "snapcore/capture/collect.py",
        "    out.sort(key=lambda t: (t.tid != pid, t.tid))\n",
        "    out.sort(key=lambda t: -t.tid)\n",
        "readers take another thread for the current one",
    ),
    Mutant(
        "siginfo-not-empty",
        "snapcore/elf/notes.py",
        '(NT_SIGINFO, b"\\0" * SIGINFO_SIZE),',
        '(NT_SIGINFO, b"\\5" + b"\\0" * (SIGINFO_SIZE - 1)),',
        "the core claims a SIGTRAP",
    ),
    Mutant(
        "pr-flag-dying",
        "snapcore/elf/notes.py",
        "        flag=proc.flag,\n",
        "        flag=proc.flag | 0x600,\n",
        "NT_PRPSINFO says the process was dying (PF_SIGNALED|PF_DUMPCORE)",
    ),
    Mutant(
        "elf-header-page-whole",
        "snapcore/capture/plan.py",
        '            p = plan(min(page_size, vma.size), READ, "ELF header", fd)\n',
        '            p = plan(vma.size, READ, "ELF header", fd)\n',
        "the ELF-header rule dumps whole mappings of the executable and libraries",
    ),
    Mutant(
        "live-reads-the-running-target",
        "snapcore/capture/job.py",
        "        self.src = src = image.child if image is not None else pid\n",
        "        self.src = src = pid\n",
        "a live core is copied from the running target, not from its image",
        first=("tests/capture/test_live.py::test_live_core_is_one_instant",),
    ),
)

# the fidelity and reader tests, most discriminating first
ORDER = (
    "tests/fidelity/test_kernel_diff.py::test_same_core_as_the_kernel[mt]",
    "tests/capture/test_foundation.py::test_registers_and_memory_equal_the_stopped_process",
    "tests/fidelity/test_edge_mappings.py::test_coredump_filter_changes_are_honoured[mt]",
    "tests/fidelity/test_kernel_diff.py::test_same_core_as_the_kernel_with_another_coredump_filter",
    "tests/fidelity/test_edge_mappings.py",
    "tests/fidelity/test_kernel_diff.py",
    "tests/capture/test_live.py::test_live_core_matches_a_normal_core_of_a_quiet_target",
    "tests/fidelity/test_readers.py",
)

IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "demo-out", "bench", "*.core"
)


def apply(text, m):
    """text with mutant m applied; ValueError unless its anchor occurs exactly once."""
    n = text.count(m.old)
    if n != 1:
        raise ValueError(f"mutant {m.name}: its text occurs {n} times in {m.path}, not once")
    return text.replace(m.old, m.new)


def scratch_tree():
    where = tempfile.mkdtemp(prefix="snapcore-mutants-")
    tree = os.path.join(where, "tree")
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
    return where, tree


def env_for(tree):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPCORE_"))}
    env.update(PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1", SNAPCORE_REQUIRE_ORACLES="1")
    return env


def pytest(tree, tests, *extra, timeout=900):
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *extra]
    argv += list(tests)
    try:
        return subprocess.run(
            argv, cwd=tree, env=env_for(tree), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, "timeout", exc.stdout or "", exc.stderr or "")


def collect(tree, tests):
    """The node ids of tests, in their order, once each (pytest merges a file given
    after one of its tests into the file's order: node ids keep theirs)."""
    p = pytest(tree, tests, "--collect-only", timeout=300)
    found = [ln for ln in p.stdout.splitlines() if "::" in ln and not ln.startswith(" ")]
    by_arg = []
    for t in tests:
        for nodeid in found if "::" not in t or "[" not in t else [t]:
            if (nodeid == t or nodeid.startswith(t + "::") or nodeid.startswith(t + "[")) and (
                nodeid not in by_arg
            ):
                by_arg.append(nodeid)
    if not by_arg:
        raise SystemExit(f"mutants: no tests collected from {tests}:\n{p.stdout}{p.stderr}")
    return by_arg


def first_failure(p):
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", p.stdout, re.M)
    return m.group(1) if m else None


def main(argv):
    wanted = set(argv)
    unknown = wanted - {m.name for m in MUTANTS}
    if unknown:
        print(f"mutants: no mutant named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if not wanted or m.name in wanted]
    for m in chosen:  # every anchor, before anything runs
        with open(os.path.join(ROOT, m.path)) as f:
            apply(f.read(), m)
    t0 = time.monotonic()
    where, tree = scratch_tree()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import snapcore; print(snapcore.__file__)"],
            cwd="/",
            env=env_for(tree),
            capture_output=True,
            text=True,
        )
        if not probe.stdout.startswith(tree):
            print(f"mutants: snapcore is imported from {probe.stdout.strip()}, not {tree}")
            return 1
        ids = collect(tree, ORDER)
        base = pytest(tree, ids, "-n", "2")
        if base.returncode != 0:
            print(base.stdout[-4000:] + base.stderr[-2000:])
            print("mutants: the tests fail on the unmutated tree; nothing to learn")
            return 1
        print(f"mutants: the tests pass on the unmutated tree ({time.monotonic() - t0:.0f} s)")
        survived = []
        for m in chosen:
            pristine = os.path.join(ROOT, m.path)
            target = os.path.join(tree, m.path)
            with open(pristine) as f:
                text = f.read()
            with open(target, "w") as f:
                f.write(apply(text, m))
            t1 = time.monotonic()
            first = collect(tree, m.first) if m.first else []
            p = pytest(tree, first + [t for t in ids if t not in first], "-x")
            with open(target, "w") as f:
                f.write(text)
            took = time.monotonic() - t1
            if p.returncode == "timeout":
                verdict = "killed by the timeout (a hang)"
            elif p.returncode == 0:
                verdict = "SURVIVED"
                survived.append(m.name)
            else:
                verdict = f"killed by {first_failure(p) or f'pytest exit {p.returncode}'}"
            print(f"{m.name:32} {verdict}  ({took:.0f} s)", flush=True)
        print(
            f"mutants: {len(chosen) - len(survived)} of {len(chosen)} killed in "
            f"{time.monotonic() - t0:.0f} s"
            + (f"; SURVIVED: {' '.join(survived)}" if survived else "")
        )
        return 1 if survived else 0
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
