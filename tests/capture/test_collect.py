"""collect.collect_threads() on a real frozen target: the batched C read
(_native.read_threads) gives what one call per file and regset gives.

sc_read_threads parses each thread's status and stat in C and reads each regset
into the size the first thread had; a regset that fills its room is read again
whole.  The first test holds the C parse to Python's (procfs.py) and the batch
to single calls; the second shrinks every regset's room so that each is cut
short, and checks that the ThreadNotes are still those read with ample room.
"""

from snapcore import _native, procfs
from snapcore.capture import collect
from snapcore.capture.freeze import Freezer
from snapcore.capture.tracer import CancelToken, run_traced
from snapcore.elf.structs import NT_PRSTATUS

from support.procs import assert_runs_on, wait_all_blocked


def frozen_collect(pid):
    """collect_threads() of pid, frozen for the call only, from a tracer thread."""

    def job():
        freezer = Freezer(pid, 10.0, CancelToken())
        frozen = freezer.freeze()
        try:
            threads, arch = collect.collect_threads(pid, frozen)
            # the same facts read one call at a time, as before the batch
            single = {
                ft.tid: (
                    procfs.parsed(pid, procfs.parse_thread_status, "status", ft.tid),
                    procfs.parsed(pid, procfs.parse_thread_times, "stat", ft.tid),
                    [_native.getregset_or_none(ft.tid, t) for t, _ in arch.regsets],
                )
                for ft in frozen
            }
            return threads, arch, single
        finally:
            freezer.resume()

    return run_traced(job, CancelToken(), lambda: None)


def facts(threads):
    return [(t.tid, t.regsets, t.sigpend, t.sighold) for t in threads]


def test_batched_reads_match_single_reads(spawn):
    t = spawn("mt", "still")
    blocked = wait_all_blocked(t.pid)
    threads, arch, single = frozen_collect(t.pid)
    assert sorted(th.tid for th in threads) == sorted(blocked)
    for th in threads:
        (state, pnd, blk), (_, utime, stime), regsets = single[th.tid]
        assert (state, pnd, blk) == ("t", th.sigpend, th.sighold)
        if th.tid != t.pid:  # (the leader's are the whole group's)
            assert (utime, stime) == (th.utime, th.stime)
        by_type = {ntype: data for ntype, _, data in th.regsets}
        assert by_type[NT_PRSTATUS] == regsets[0]
        for (ntype, _), data in zip(arch.regsets, regsets):
            if data is not None and arch.regset_active(ntype, data):
                assert by_type[ntype] == data, hex(ntype)
            else:
                assert ntype not in by_type, hex(ntype)
    assert wait_all_blocked(t.pid) == blocked
    assert_runs_on(t, progress=False)


def test_parts_cut_short_are_read_again_whole(spawn, monkeypatch):
    t = spawn("mt", "still")
    blocked = wait_all_blocked(t.pid)
    ample, _, _ = frozen_collect(t.pid)
    plan = collect._regset_plan

    def tight_plan(frozen):
        types, caps, _ = plan(frozen)
        return types, [8] * len(caps), [False] * len(caps)  # every regset cut short

    monkeypatch.setattr(collect, "_regset_plan", tight_plan)
    tight, _, _ = frozen_collect(t.pid)
    assert facts(tight) == facts(ample)
    # the times too: every thread blocked, at most a tick from the interruptions
    for a, b in zip(ample, tight):
        assert 0 <= b.utime - a.utime <= 1 and 0 <= b.stime - a.stime <= 1
    assert wait_all_blocked(t.pid) == blocked
    assert_runs_on(t, progress=False)
