"""Edge mappings, each made by a target (mt edge=DIR) and checked in the core.

test_kernel_diff.py compares these same mappings with the kernel's own core;
here each one is checked against what the target wrote (tests/support/targets.py
edge_pattern mirrors mt.c fill()) and against what gdb reads from the core.
"""

import os
import re

import pytest

import snapcore

from support.coreparse import Core
from support.oracles import gdb_batch
from support.procs import assert_runs_on
from support.targets import edge_pattern, need_built, target_path

PF_X, PF_W, PF_R = 1, 2, 4


@pytest.fixture(params=["mt", "mt32"])
def edge(request, spawn, tmp_path):
    name = request.param
    need_built(name)
    files = tmp_path / "files"
    files.mkdir()
    t = spawn(name, f"edge={files}")
    t.wait_blocked()
    t.files = str(files)
    t.exe = target_path(name)
    return t


def snap(t, path, **kw):
    s = snapcore.snapshot(t.pid, path, **kw)
    return Core(s.path)


def gdb_bytes(exe, core, addrs, n=8):
    """{addr: the first n bytes gdb reads there from the core}."""
    cmds = [f"print/x *(unsigned char (*)[{n}]) {a:#x}" for a in addrs]
    out = gdb_batch(exe, core, *cmds).stdout
    vals = re.findall(r"^\$\d+ = \{(.*)\}$", out, re.M)
    assert len(vals) == len(addrs), out
    return {a: bytes(int(x, 16) for x in v.split(", ")) for a, v in zip(addrs, vals)}


def test_edge_mappings_in_the_core(edge, tmp_path):
    info, pg = edge.info, edge.info["page_size"]
    with snap(edge, tmp_path / "core") as c:
        _, files = c.file_note()
        names = {start: (end, pgoff, name) for start, end, pgoff, name in files}

        # written, then PROT_NONE: dumped whole with its data, p_flags 0
        ld = c.load_at(info["prot_none"])
        assert (ld.vaddr, ld.memsz, ld.filesz, ld.flags) == (info["prot_none"], 2 * pg, 2 * pg, 0)
        assert c.read(ld.vaddr, 2 * pg) == edge_pattern(1, 2 * pg)

        # MADV_DONTDUMP: a PT_LOAD with nothing dumped
        ld = c.load_at(info["dontdump"])
        assert (ld.memsz, ld.filesz, ld.flags) == (2 * pg, 0, PF_R | PF_W)

        # shared anonymous, memfd and a deleted file: shared with i_nlink 0, dumped whole
        for key, seed, name in (
            ("shared_anon", 3, b"/dev/zero (deleted)"),
            ("memfd", 4, b"/memfd:snapcore-memfd (deleted)"),
            ("deleted", 5, f"{edge.files}/deleted-file (deleted)".encode()),
        ):
            ld = c.load_at(info[key])
            assert (ld.memsz, ld.filesz) == (2 * pg, 2 * pg), key
            assert c.read(ld.vaddr, 2 * pg) == edge_pattern(seed, 2 * pg), key
            assert names[info[key]] == (info[key] + 2 * pg, 0, name), key

        # file-private with one COW page: the whole VMA, file pages around the written one
        ld = c.load_at(info["cow"])
        assert (ld.memsz, ld.filesz) == (3 * pg, 3 * pg)
        file_bytes = edge_pattern(6, 3 * pg)
        assert c.read(ld.vaddr, pg) == file_bytes[:pg]
        assert c.read(ld.vaddr + pg, pg) == edge_pattern(7, pg)
        assert c.read(ld.vaddr + 2 * pg, pg) == file_bytes[2 * pg :]

        # the main thread's blocked and pending SIGUSR1, in its NT_PRSTATUS
        main = c.threads[0]
        assert main.tid == edge.pid
        assert main.prstatus["pr_sigpend"] == info["main_sigpend"]
        assert main.prstatus["pr_sighold"] & info["main_sigpend"]
        assert all(not t.prstatus["pr_sigpend"] for t in c.threads[1:])

        # a name with spaces and a newline, byte for byte; a shared file is not dumped
        odd = f"{edge.files}/with space\nand newline".encode()
        assert names[info["odd_name"]] == (info["odd_name"] + pg, 0, odd)
        assert c.load_at(info["odd_name"]).filesz == 0
        core = c.path

    # gdb reads the same bytes, PROT_NONE data included
    keys = ("prot_none", "shared_anon", "memfd", "deleted")
    seen = gdb_bytes(edge.exe, core, [info[k] for k in keys] + [info["cow"] + pg])
    for k, seed in zip(keys, (1, 3, 4, 5)):
        assert seen[info[k]] == edge_pattern(seed, 8), k
    assert seen[info["cow"] + pg] == edge_pattern(7, 8)
    assert_runs_on(edge)


def test_coredump_filter_changes_are_honoured(edge, tmp_path):
    info, pg = edge.info, edge.info["page_size"]
    filter_path = f"/proc/{edge.pid}/coredump_filter"

    def set_filter(value):
        with open(filter_path, "w") as f:
            f.write(f"{value:#x}")

    exe_first = None
    # 0x31: anonymous shared memory off -> shmem, memfd and the deleted file not dumped
    set_filter(0x31)
    with snap(edge, tmp_path / "c31") as c:
        for key in ("shared_anon", "memfd", "deleted"):
            assert c.load_at(info[key]).filesz == 0, key
        assert c.load_at(info["prot_none"]).filesz == 2 * pg  # private anon still on
        exe_first = [e for e in c.file_note()[1] if e[3] == edge.exe.encode()][0][0]
        assert c.load_at(exe_first).filesz == pg  # ELF header page (bit 4)
    # 0x3f: file-backed shared and private on -> the odd-named file and libc text dumped
    set_filter(0x3F)
    with snap(edge, tmp_path / "c3f") as c:
        ld = c.load_at(info["odd_name"])
        assert ld.filesz == pg and c.read(ld.vaddr, pg) == edge_pattern(8, pg)
        text = [e for e in c.file_note()[1] if b"libc.so" in e[3] and c.load_at(e[0]).flags & PF_X]
        assert text and all(c.load_at(e[0]).filesz == e[1] - e[0] for e in text)
    # 0x23: the ELF header bit off -> not even the executable's first page
    set_filter(0x23)
    with snap(edge, tmp_path / "c23") as c:
        assert c.load_at(exe_first).filesz == 0
    # snapshot(coredump_filter=) overrides the target's own filter
    with snap(edge, tmp_path / "c33", coredump_filter=0x33) as c:
        assert c.load_at(info["shared_anon"]).filesz == 2 * pg
        assert c.load_at(exe_first).filesz == pg
    with open(filter_path) as f:
        assert int(f.read(), 16) == 0x23  # left as the target had it
    assert_runs_on(edge)


def test_special_mappings_as_the_kernel_writes_them(edge, tmp_path):
    """[vdso] whole with its bytes, [vvar]/[vvar_vclock] whole but holes, [vsyscall] last."""
    with open(f"/proc/{edge.pid}/maps") as f:
        special = {}
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s+(\[\w+\])$", line.strip())
            if m:
                special[m.group(3)] = (int(m.group(1), 16), int(m.group(2), 16))
    assert "[vdso]" in special and "[vvar]" in special
    with open(f"/proc/{edge.pid}/mem", "rb") as mem:
        start, end = special["[vdso]"]
        mem.seek(start)
        vdso = mem.read(end - start)
    with snap(edge, tmp_path / "core") as c:
        ld = c.load_at(special["[vdso]"][0])
        assert ld.filesz == ld.memsz and c.load_bytes(ld) == vdso
        assert ld.flags == PF_R | PF_X
        fd = os.open(c.path, os.O_RDONLY)
        try:
            # [vvar], and [vvar_vclock] on kernels that have it (6.13 on): as /proc lists them
            vvars = [name for name in special if name.startswith("[vvar")]
            assert "[vvar]" in vvars, special
            for name in vvars:
                start, end = special[name]
                ld = c.load_at(start)
                assert (ld.vaddr, ld.memsz, ld.filesz) == (start, end - start, end - start)
                # unreadable (VM_IO|VM_PFNMAP): a hole, zeros to every reader
                try:
                    data_at = os.lseek(fd, ld.offset, os.SEEK_DATA)
                except OSError:
                    data_at = c.size  # no data after it at all
                assert data_at >= ld.offset + ld.filesz, name
        finally:
            os.close(fd)
        if edge.argv[0].endswith("mt32"):
            assert "[vsyscall]" not in special  # no gate VMA in an ia32 process
        else:
            start, end = special["[vsyscall]"]
            ld = c.loads[-1]
            assert (ld.vaddr, ld.memsz, ld.filesz, ld.flags) == (start, 4096, 4096, PF_X)
            assert c.load_bytes(ld) == b"\0" * 4096
    assert_runs_on(edge)
