"""End to end: a real multi-threaded target, snapshotted, read by real tools."""

import errno
import os
import random
import re
import signal
import struct

import pytest
from elftools.elf.elffile import ELFFile

import snapcore

from support.coreparse import NT_PRFPREG, NT_X86_XSTATE, Core
from support.oracles import (
    REG_NAMES_X86_64,
    assert_known_frames,
    assert_mt_backtraces,
    build_id,
    core_loads,
    eu_stack,
    eu_unstrip,
    gdb_batch,
    ptrace_registers,
    raw_notes,
    read_core_memory,
)
from support.procs import assert_runs_on, wait_all_stopped
from support.targets import (
    MARKER,
    MT_OUTER,
    MT_THREAD_FUNCS,
    pattern_buf,
    pattern_half,
    target_path,
)


@pytest.fixture
def snap(mt, tmp_path):
    s = snapcore.snapshot(mt.pid, tmp_path / "core")
    assert_runs_on(mt)
    mt.wait_blocked()
    return s


def test_gdb_shows_every_thread_and_the_global(mt, snap):
    assert_mt_backtraces(target_path("mt"), snap.path, mt.info["tids"])
    out = gdb_batch(target_path("mt"), snap.path, "print/x snapcore_marker").stdout
    assert f"= {MARKER:#x}" in out
    assert "Program terminated with signal" not in out
    assert_runs_on(mt)


def test_result_describes_the_snapshot(mt, snap):
    assert snap.pid == mt.pid
    assert sorted(snap.tids) == sorted(mt.info["tids"])
    assert snap.tids[0] == mt.pid  # the main thread is the current one
    assert snap.arch == "x86_64"
    st = os.stat(snap.path)
    assert st.st_size == snap.file_size
    assert st.st_mode & 0o777 == 0o600
    assert snap.bytes_on_disk < snap.file_size  # sparse: untouched memory is holes
    assert snap.segments == len(core_loads(snap.path))
    assert 0 < snap.pause_time <= snap.wall_time
    assert_runs_on(mt)


def test_registers_and_memory_equal_the_stopped_process(spawn, tmp_path):
    """The control: stop the target (SIGSTOP), snapshot it, then, while it is still
    stopped, read it without snapcore: every register of every thread with ptrace
    from a process of the test (support/oracles.py ptrace_registers), and 300 random
    dumped pages through /proc/PID/mem.  The core must hold exactly that: all 27
    words of each thread's NT_PRSTATUS pr_reg, its NT_PRFPREG and NT_X86_XSTATE
    bytes, and each page's bytes (zeros where /proc/PID/mem cannot read either)."""
    files = tmp_path / "files"
    files.mkdir()
    t = spawn("mt", f"edge={files}")  # PROT_NONE, shared, memfd, COW file mappings too
    t.wait_blocked()
    os.kill(t.pid, signal.SIGSTOP)
    try:
        wait_all_stopped(t.pid)
        s = snapcore.snapshot(t.pid, tmp_path / "core")
        wait_all_stopped(t.pid)  # a job-control-stopped process stays stopped
        live = ptrace_registers(t.pid)
        wait_all_stopped(t.pid)
        with Core(s.path) as c:
            pages = [(ld, off) for ld in c.loads for off in range(0, ld.filesz, 4096)]
            picked = random.Random(t.pid).sample(pages, min(300, len(pages)))
            compared = unreadable = 0
            with open(f"/proc/{t.pid}/mem", "rb", buffering=0) as mem:
                for ld, off in picked:
                    addr = ld.vaddr + off
                    try:
                        if addr >= 1 << 63:  # [vsyscall]: beyond what lseek takes, and xonly
                            raise OSError("not readable")
                        mem.seek(addr)
                        want = mem.read(4096)
                    except OSError:
                        want = b"\0" * 4096  # [vvar], [vsyscall]: nobody reads them
                        unreadable += 1
                    assert c.read(addr, 4096) == want, hex(addr)
                    compared += 1
            regs = {th.tid: th for th in c.threads}
            assert sorted(regs) == sorted(live) == sorted(t.info["tids"])
            for tid, (gp, fp, xs) in live.items():
                th = regs[tid]
                assert th.prstatus["pr_reg"] == gp, (tid, diff_words(th.prstatus["pr_reg"], gp))
                notes = {ntype: desc for _, ntype, desc in th.notes}
                assert notes[NT_PRFPREG] == fp, tid
                assert notes[NT_X86_XSTATE] == xs, tid
    finally:
        os.kill(t.pid, signal.SIGCONT)
    assert compared == len(picked) >= 300 and unreadable < len(picked) // 10
    assert_runs_on(t)


def diff_words(a, b):
    """{register name: (core, live)} of the words that differ."""
    wa, wb = struct.unpack("<27Q", a), struct.unpack("<27Q", b)
    return {n: (hex(x), hex(y)) for n, x, y in zip(REG_NAMES_X86_64, wa, wb) if x != y}


def test_eu_stack_shows_all_threads(mt, snap):
    frames, p = eu_stack(snap.path, target_path("mt"))
    assert_known_frames(frames, mt.info["tids"], MT_THREAD_FUNCS, MT_OUTER)
    assert_runs_on(mt)


def test_eu_unstrip_lists_the_executable_build_id(mt, snap):
    want = build_id(target_path("mt"))
    p = eu_unstrip(snap.path)
    lines = [ln for ln in p.stdout.splitlines() if want in ln]
    assert len(lines) == 1, p.stdout + p.stderr
    assert lines[0].split()[4] == os.path.realpath(target_path("mt")), lines
    assert "libc.so" in p.stdout
    assert_runs_on(mt)


def test_notes_have_the_kernel_sizes_and_order(mt, snap):
    notes = raw_notes(snap.path)
    kinds = [(n, t) for n, t, _ in notes]
    # T0: PRSTATUS, PRPSINFO, SIGINFO, AUXV, FILE, then its FP/XSTATE notes
    assert kinds[:5] == [
        ("CORE", 1),
        ("CORE", 3),
        ("CORE", 0x53494749),
        ("CORE", 6),
        ("CORE", 0x46494C45),
    ]
    sizes = {1: 336, 3: 136, 0x53494749: 128, 2: 512}
    for name, ntype, desc in notes:
        if ntype in sizes and name == "CORE":
            assert len(desc) == sizes[ntype], (ntype, len(desc))
    prstatus = [d for n, t, d in notes if (n, t) == ("CORE", 1)]
    assert len(prstatus) == len(mt.info["tids"])
    # every PRSTATUS is followed by that thread's FP registers before the next one
    per_thread = []
    for n, t, _d in notes:
        if (n, t) == ("CORE", 1):
            per_thread.append([])
        elif per_thread:
            per_thread[-1].append((n, t))
    for extra in per_thread:
        assert ("CORE", 2) in extra and ("LINUX", 0x202) in extra
    # NT_X86_XSAVE_LAYOUT ends the kernel's notes; snapcore's own record follows
    assert kinds[-2:] == [("LINUX", 0x205), ("SNAPCORE", 0x4D455441)]
    # on-demand: no signal anywhere
    assert all(d[12:14] == b"\0\0" for d in prstatus)
    siginfo = [d for n, t, d in notes if t == 0x53494749][0]
    assert siginfo == b"\0" * 128
    auxv = [d for n, t, d in notes if t == 6][0]
    with open(f"/proc/{mt.pid}/auxv", "rb") as f:
        assert auxv == f.read()
    assert_runs_on(mt)


def test_pyelftools_framing(mt, snap):
    with open(snap.path, "rb") as f:
        elf = ELFFile(f)
        assert elf.header["e_type"] == "ET_CORE"
        assert elf.header["e_machine"] == "EM_X86_64"
        assert elf.header["e_ident"]["EI_OSABI"] == "ELFOSABI_SYSV"
        segs = list(elf.iter_segments())
        assert segs[0]["p_type"] == "PT_NOTE" and segs[0]["p_align"] == 4
        loads = [s for s in segs if s["p_type"] == "PT_LOAD"]
        vaddrs = [s["p_vaddr"] for s in loads]
        assert vaddrs == sorted(vaddrs)
        size = os.path.getsize(snap.path)
        running = None
        for s in loads:
            assert s["p_paddr"] == 0 and s["p_align"] == 4096
            assert s["p_offset"] % 4096 == 0
            assert s["p_filesz"] in (0, 4096, s["p_memsz"])
            assert s["p_offset"] + s["p_filesz"] <= size
            if running is not None:
                assert s["p_offset"] == running  # back to back, even when empty
            running = s["p_offset"] + s["p_filesz"]
        assert running == size
    assert_runs_on(mt)


def test_known_buffers_hold_what_the_target_wrote(mt, snap):
    info = mt.info
    assert read_core_memory(snap.path, info["buf"], info["buf_len"]) == pattern_buf(info["buf_len"])
    touched = info["half_len"] // 4
    data = read_core_memory(snap.path, info["half"], info["half_len"])
    assert data[:touched] == pattern_half(touched)
    assert data[touched:] == b"\0" * (info["half_len"] - touched)
    # the untouched 3 MiB are a hole in the file, not written zeros (up to the buffer's
    # end: the kernel may have merged the mapping with a neighbour holding data)
    ld = [x for x in core_loads(snap.path) if x["vaddr"] == info["half"]][0]
    assert ld["filesz"] >= info["half_len"]
    fd = os.open(snap.path, os.O_RDONLY)
    try:
        hole = os.lseek(fd, ld["offset"] + touched, os.SEEK_HOLE)
        assert hole == ld["offset"] + touched
        try:
            data_at = os.lseek(fd, ld["offset"] + touched, os.SEEK_DATA)
        except OSError as exc:  # ENXIO: no data after it at all
            assert exc.errno == errno.ENXIO, exc
        else:
            assert data_at >= ld["offset"] + info["half_len"]
    finally:
        os.close(fd)
    assert_runs_on(mt)


def test_untouched_memory_is_not_committed(mt, tmp_path):
    """Reading the 3 untouched MiB must not fault them into the target."""

    def rss_of_half():
        with open(f"/proc/{mt.pid}/smaps") as f:
            text = f.read()
        start = f"{mt.info['half']:x}-"
        block = text[text.index(start) :]
        return int(re.search(r"^Rss:\s+(\d+) kB", block, re.M).group(1))

    before = rss_of_half()
    snapcore.snapshot(mt.pid, tmp_path / "core")
    assert rss_of_half() == before
    assert_runs_on(mt)


def test_default_path_is_core_dot_pid_in_cwd(mt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = snapcore.snapshot(mt.pid)
    assert s.path == f"core.{mt.pid}"
    assert (tmp_path / f"core.{mt.pid}").exists()
    assert_runs_on(mt)


@pytest.mark.parametrize("exe", ["mt_nopie", "mt_static"])
def test_other_link_modes_give_backtraces(spawn, tmp_path, exe):
    t = spawn(exe)
    t.wait_blocked()
    s = snapcore.snapshot(t.pid, tmp_path / "core")
    out = gdb_batch(target_path(exe), s.path, "print/x snapcore_marker").stdout
    assert f"= {MARKER:#x}" in out
    assert_mt_backtraces(target_path(exe), s.path, t.info["tids"])
    assert_runs_on(t)
