"""The parsers of support/oracles.py, on captured reader output.

A parser that lost a thread's frames would let two different backtraces
compare equal: each thread must come out whole, once.
"""

import pytest

from support.oracles import (
    EU_FRAME,
    GDB_THREAD,
    LLDB_FRAME,
    LLDB_THREAD,
    frames_by_thread,
    registers_by_thread,
    sections,
)

GDB_BT = """\
Thread 2 (Thread 0x7fb01e1ff6c0 (LWP 26380)):
#0  0x00007fb01e8b1545 in __GI___clock_nanosleep (clock_id=clock_id@entry=0) at x.c:48
#1  0x00007fb01e8b5e53 in __GI___nanosleep (req=req@entry=0x7fb01e1feec0) at y.c:25
#2  0x0000558452a58485 in sleeper_thread (arg=<optimized out>) at mt.c:90
#3  0x00007fb01e86b1f5 in start_thread (arg=<optimized out>) at pthread_create.c:442
#4  0x00007fb01e8eb8ec in clone3 () at clone3.S:81

Thread 1 (Thread 0x7fb01e7df740 (LWP 26378)):
#0  __GI___libc_read (nbytes=4096, buf=0x55847adb6610, fd=0) at read.c:26
#1  0x00007fb01e86416e in _IO_new_file_underflow (fp=0x7fb01e9b5a80) at fileops.c:516
#2  0x0000558452a58c3c in command_loop () at mt.c:142
#3  0x0000558452a5921e in main (argc=<optimized out>, argv=<optimized out>) at mt.c:368
"""

GDB_REGS = """\
Thread 2 (Thread 0x7fb11a1ff6c0 (LWP 14456) "sleeper"):
rax            0xfffffffffffffdfc  -516
rip            0x7fb11a96a545      0x7fb11a96a545 <__GI___clock_nanosleep+101>
Thread 1 (LWP 14453):
rax            0xfffffffffffffe00  -512
"""


def test_sections_refuse_a_thread_listed_twice():
    """The old blocks() started a thread's block again at its second header, so the
    output of `thread apply all bt` followed by `thread apply all info registers`
    kept only the registers, and backtraces were never compared."""
    twice = GDB_BT + GDB_BT.replace("#0 ", "#0 registers-only ")
    with pytest.raises(AssertionError, match="appears twice"):
        sections(twice, GDB_THREAD)


def test_gdb_frames_per_thread():
    frames = frames_by_thread(GDB_BT)
    assert frames == {
        26380: [
            "__GI___clock_nanosleep",
            "__GI___nanosleep",
            "sleeper_thread",
            "start_thread",
            "clone3",
        ],
        26378: ["__GI___libc_read", "_IO_new_file_underflow", "command_loop", "main"],
    }


def test_gdb_registers_per_thread_live_and_core_headers():
    regs = registers_by_thread(GDB_REGS)
    assert regs == {
        14456: {"rax": 0xFFFFFFFFFFFFFDFC, "rip": 0x7FB11A96A545},
        14453: {"rax": 0xFFFFFFFFFFFFFE00},
    }


def test_eu_stack_frames_keep_unnamed_ones():
    text = "TID 7:\n#0  0xf7f1c5e9 __kernel_vsyscall\n#1  0xf7d052d5\n#2  0x565bb1c6 - 1 main\n"
    frames = frames_by_thread(text, r"^TID (\d+):", EU_FRAME)
    assert frames == {7: ["__kernel_vsyscall", "", "main"]}


def test_lldb_frames():
    text = (
        "* thread #1, name = 'mt', stop reason = signal SIGSTOP\n"
        "  * frame #0: 0x00007fb01e8da2ec libc.so.6`__GI___libc_read at read.c:26:10\n"
        "    frame #1: 0x0000558452a58c3c mt`command_loop at mt.c:142:12\n"
        "  thread #2, name = 'sleeper', stop reason = signal 0\n"
        "    frame #0: 0x00007fb01e8b1545 libc.so.6`__GI___clock_nanosleep(clock_id=0) at c:48\n"
    )
    frames = frames_by_thread(text, LLDB_THREAD, LLDB_FRAME)
    assert frames == {1: ["__GI___libc_read", "command_loop"], 2: ["__GI___clock_nanosleep"]}


def test_a_gap_in_frame_numbers_is_an_error():
    with pytest.raises(AssertionError):
        frames_by_thread(GDB_BT.replace("#1  0x00007fb01e8b5e53", "#7  0x00007fb01e8b5e53"))
