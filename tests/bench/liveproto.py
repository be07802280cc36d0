#!/usr/bin/env python3
"""Live mode: two ways to copy from the forked image, measured side by side.

    liveproto.py [--sizes 1024,4096] [--reps 5] [--churn 256] [--tiny]

Each variant runs in this process (no helper process, so no interpreter start-up
and no helper exit in the figures; only how memory leaves the image differs),
on the same benchtarget, interleaved rep after rep:

    normal      snapcore.snapshot's job in stop mode (process_vm_readv, C loop)
    live/mem    live mode as it is: the C loop reads the image through
                /proc/PID/mem, its writer thread writes (overlapped)
    live/mem-1t the same without the writer thread (read, then write)
    live/self   live mode with self-write (snapcore/live.py ImageWriter): the
                image pwrite()s its own resident runs of >= 1 MiB into the core
                while the C loop copies the rest through /proc/PID/mem
    live/self-70  the same, the image taking 70% of those bytes and the C loop
                the rest, so that both CPUs copy

For each: in-call wall, the copy step alone, the target's pause (its heartbeat:
largest gap of the run), snapcore's own pause count, and the copy-on-write
window; on idle targets the data region of each core is checked against the
target's memory.  Prints a Markdown table (median (min-max)).  Needs root.
"""

import argparse
import hashlib
import importlib
import os
import statistics
import sys
import threading
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE)))

import bench  # noqa: E402

from snapcore import live, metadata, output, tracer  # noqa: E402
from snapcore.memory import Copier  # noqa: E402

from coreparse import Core  # noqa: E402

S = importlib.import_module("snapcore.snapshot")  # the module, not the function

VARIANTS = ("normal", "live/mem", "live/mem-1t", "live/self", "live/self-70")


def _self_write_copy(self, plans, layout):
    """_Job._copy_to_file with the image writing its big runs itself."""
    if self.src == self.pid:
        return S._Job._copy_to_file(self, plans, layout)
    out = self.out
    out.write_at(layout.header_block(), 0)
    t0 = time.monotonic()
    runs, rest, rest_off = live.split_for_self_write(
        self.src, plans, layout.offsets, share=self._share
    )
    copier = Copier(
        self.src, out.fd, self.opts.buffer_size, self.opts.writer_thread, use_readv=False
    )
    box = {}

    def c_loop():
        try:
            box["result"] = copier.run(rest, rest_off)
        except BaseException as exc:  # handed to this thread
            box["error"] = exc

    t = threading.Thread(target=c_loop, name="snapcore-copy")
    t.start()
    try:
        with live.ImageWriter(self._arch, self.src, out.fd) as w:
            w.write_runs(runs, self.cancel)
        self._image_cpu = _cpu_of(self.src)
    finally:
        t.join()
        copier.close()
    if "error" in box:
        raise box["error"]
    result = box["result"]
    result.bytes_read += w.bytes
    result.bytes_written += w.bytes
    result.copy_seconds = time.monotonic() - t0
    self._self = {"runs": len(runs), "bytes": w.bytes, "calls": w.calls}
    trailer = layout.trailer_block()
    if trailer is not None:
        out.write_at(trailer[1], trailer[0])
    return result


def _cpu_of(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _keep_arch(self, threads, arch, image=None):
    self._arch = arch
    return S._Job._write(self, threads, arch, image=image)


def snap(pid, path, variant):
    """One snapshot in this process; returns (Snapshot, copy seconds, extra)."""
    t0 = time.monotonic()
    c0 = os.times()
    status = S.check_target(pid)
    opts = S._Options(live=variant != "normal", writer_thread=variant != "live/mem-1t")
    out = output.CoreFile(path, force=True)
    cancel = tracer.CancelToken()
    job = S._Job(pid, out, status, opts, metadata.process_facts(pid), time.time(), cancel)
    job._write = types.MethodType(_keep_arch, job)
    if variant.startswith("live/self"):
        job._copy_to_file = types.MethodType(_self_write_copy, job)
        job._share = 0.7 if variant == "live/self-70" else 1.0
    try:
        s = tracer.run_traced(job.run, cancel, lambda: None)
        size, _ = job.finish(s, t0)
        out.finish(size)
    except BaseException:
        out.abort()
        raise
    s.wall_time = time.monotonic() - t0
    c1 = os.times()
    s.cpu = c1.user - c0.user + c1.system - c0.system + getattr(job, "_image_cpu", 0.0)
    return s, getattr(job, "_self", None)


def region_digest(read, addr, length):
    h = hashlib.sha256()
    for off in range(0, length, 16 << 20):
        h.update(read(addr + off, min(16 << 20, length - off)))
    return h.hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096", help="MiB of random data, comma-separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--churn", type=int, default=256, help="pages/ms for the churn targets")
    p.add_argument("--no-churn", action="store_true", help="idle targets only")
    p.add_argument("--dir", default="/tmp", help="where the cores go")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which, comma-separated")
    args = p.parse_args(argv)
    variants = tuple(v for v in VARIANTS if v in args.variants.split(","))
    rows = []
    for mib in [int(x) for x in args.sizes.split(",")]:
        for churn in [0] if args.no_churn else [0, args.churn]:
            spec = bench.Spec(f"r{mib}", "", random=mib << 20, thp=False, churn=churn)
            t = bench.BenchTarget(spec, args.dir)
            res = {v: [] for v in variants}
            try:
                addr, length = t.info["addr"], t.info["random_bytes"]
                want = None
                if not churn:
                    fd = os.open(f"/proc/{t.pid}/mem", os.O_RDONLY)
                    want = region_digest(lambda a, n, fd=fd: os.pread(fd, n, a), addr, length)
                    os.close(fd)
                for rep in range(args.reps):
                    k = rep % len(variants)
                    for v in variants[k:] + variants[:k]:
                        path = os.path.join(args.dir, "liveproto.core")
                        os.sync()
                        with open("/proc/sys/vm/drop_caches", "w") as f:
                            f.write("1\n")
                        t.gap()
                        t.wait_in_read()
                        s, extra = snap(t.pid, path, v)
                        time.sleep(0.05)
                        gap = t.gap()[0]
                        ok = None
                        if want is not None:
                            with Core(path) as c:
                                ok = region_digest(c.read, addr, length) == want
                        st = os.stat(path)
                        os.unlink(path)
                        os.sync()
                        r = {
                            "wall": s.wall_time,
                            "copy": s.stats["copy_seconds"],
                            "cpu": s.cpu,
                            "pause": gap,
                            "self_pause": s.pause_time,
                            "cow": s.cow_time,
                            "disk": st.st_blocks * 512,
                            "ok": ok,
                            "extra": extra,
                        }
                        res[v].append(r)
                        print(
                            f"[liveproto] {mib} MiB churn {churn} {v:<10} rep {rep}: "
                            f"wall {r['wall']:.3f} copy {r['copy']:.3f} cpu {r['cpu']:.2f} pause "
                            f"{r['pause'] * 1000:.1f} ms cow {r['cow']:.3f} "
                            f"disk {r['disk'] >> 20} MiB same-bytes {ok} {extra or ''}",
                            flush=True,
                        )
            finally:
                t.close()
            rows.append((mib, churn, res))
    print()
    print(
        "| target | variant | in-call wall | copy step | ÷ normal (wall) | CPU (s) "
        "| pause (heartbeat) | snapcore's pause | cow window | data equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mib, churn, res in rows:
        nw = statistics.median(r["wall"] for r in res["normal"])
        for v in variants:
            rs = res[v]

            def f(key, scale=1.0, fmt="{:.3f}", rs=rs):
                xs = [r[key] * scale for r in rs]
                return (
                    fmt.format(statistics.median(xs))
                    + " ("
                    + fmt.format(min(xs))
                    + "–"
                    + fmt.format(max(xs))
                    + ")"
                )

            w = statistics.median(r["wall"] for r in rs)
            oks = {r["ok"] for r in rs}
            print(
                f"| {mib} MiB random{f', written {churn} pages/ms' if churn else ', idle'} "
                f"| {v} | {f('wall')} s | {f('copy')} s | {w / nw:.2f}× | "
                f"{f('cpu', 1, '{:.2f}')} | "
                f"{f('pause', 1000, '{:.1f}')} ms | {f('self_pause', 1000, '{:.1f}')} ms | "
                f"{f('cow')} s | {'—' if oks == {None} else 'yes' if oks == {True} else 'NO'} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
