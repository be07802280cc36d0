"""`snapcore why`: a hang verdict from cores, across threads and processes.

    explain(target) -> result          a core file or a tree directory
    analyze([Process]) -> result       (whymodel.load gives the processes)
    compare([result, ...]) -> result   the last of several samples, with each
                                       group marked "stuck" or "slow"

The result (docs/why.md; the keys are fixed):

    verdict     "deadlock" | "blocked" | "busy" | "idle"
    summary     one line
    deadlocks   [[{pid, tid, waits_for}, ...]]   each cycle of the wait-for graph
    groups      [{count, threads: [[pid, tid]], stack, python_stack, progress?}]
                threads with the same native and Python stack, across processes
    processes   [{pid, ppid, comm, cmdline, core, error, verdict, unwinder, unfrozen,
                  python, threads: [{tid, name, class, timeout, kernel,
                  waits_for, stack, python_stack}]}]

Verdict: a cycle is a deadlock; else any thread waiting on something a thread
or process of the snapshot holds (or on a lock that records no owner, or a
child, or stuck in the kernel) is blocked; else threads on CPU make it busy;
else it is idle (waiting for input, a timer or a notification).
"""

from . import whymodel
from .waitgraph import Graph

VERDICTS = ("deadlock", "blocked", "busy", "idle")
RUNNING = ("on-cpu", "user-code")
# CPU time a blocked thread is charged for being frozen and let go by a snapshot
# (~20 us measured); more than this per sample is progress
SNAPSHOT_CPU_NS = 1_000_000


def explain(target):
    processes = whymodel.load(target)
    try:
        return analyze(processes)
    finally:
        for p in processes:
            p.close()


def python_stack(th):
    frames = (th.python or {}).get("frames") or []
    return [f"{f['name']} ({f['file']}:{f['line']})" for f in frames]


def _who(th):
    return f"thread {th.tid}" + (f" ({th.name})" if th.name else "") + f" of pid {th.pid}"


def describe_edge(e):
    """The thing waited for, in words (without the waiter)."""
    kind, owner = e["kind"], e.get("owner")
    held = ""
    if owner is not None:
        held = (
            f" held by thread {owner['tid']} of pid {owner['pid']}"
            if owner.get("tid") is not None
            else f" held by pid {owner['pid']}"
        )
    addr = f" {e['address']:#x}" if e.get("address") else ""
    if kind == "lock":
        cands = e.get("candidates") or []
        text = f"Lock{addr} (a threading.Lock records no owner"
        if cands:
            text += "; candidates: " + ", ".join(f"thread {c['tid']} {c['why']}" for c in cands[:4])
        return text + ")"
    if kind in ("pipe", "socket"):
        where = f"{kind} {e.get('target')} (fd {e.get('fd')})"
        if owner is None:
            return f"{where}: {e.get('detail') or 'the other end is outside the snapshot'}"
        others = e.get("owners") or [owner]
        return (
            f"{where}, whose other end pid " + ", ".join(str(o["pid"]) for o in others) + " holds"
        )
    if kind == "child":
        others = e.get("owners") or ([owner] if owner else [])
        if not others:
            return "a child (none in the snapshot)"
        return "child " + ", ".join(f"pid {o['pid']}" for o in others)
    names = {
        "mutex": "mutex",
        "rwlock": "rwlock",
        "rlock": "RLock",
        "gil": "the GIL",
        "condition": "a condition",
        "semaphore": "a semaphore",
        "join": "a thread to finish (join)",
        "accept": f"a client on fd {e.get('fd')}",
        "kernel": "the kernel",
        "futex": "a futex",
        "poll": "fds " + ", ".join(str(f) for f in e.get("fds") or []),
        "read": f"input on fd {e.get('fd')}"
        + (f" ({e['target']})" if e.get("target") else " (not in the fd table recorded)"),
        "write": f"room to write on fd {e.get('fd')}"
        + (f" ({e['target']})" if e.get("target") else ""),
    }
    text = names.get(kind, kind) + (addr if kind not in ("gil", "accept", "read", "write") else "")
    text += held
    if e.get("detail") and kind not in ("gil", "join", "accept"):
        text += f" ({e['detail']})"
    return text


def state_words(th):
    call = th.call
    if th.klass in RUNNING:
        return "is on CPU" if th.klass == "on-cpu" else "runs user code"
    if th.klass == "uninterruptible":
        return f"is uninterruptible in {th.kernel.get('wchan') or 'the kernel'}"
    if th.klass == "snapcore":
        return "is snapcore, taking this snapshot"
    if th.klass in ("stopped", "traced", "exited"):
        tracer = th.kernel.get("tracer")
        return f"is {th.klass}" + (f" by pid {tracer}" if th.klass == "traced" and tracer else "")
    if call is None:
        return "sleeps"
    t = "" if th.timeout is None else (" with a timeout" if th.timeout else "")
    return f"sleeps in {call['name']}{t}"


def _chain(graph, th, limit=6):
    """'thread A waits for X held by thread B, which ...' from th."""
    parts, seen = [], set()
    while th is not None and th.tid not in seen and len(parts) < limit:
        seen.add(th.tid)
        e = th.waits_for
        if e is None:
            parts.append(f"{_who(th)}, which {state_words(th)}" if parts else state_words(th))
            break
        parts.append(f"{_who(th)} waits for {describe_edge(e)}")
        owner = e.get("owner")
        if owner is None and e.get("candidates"):
            owner = e["candidates"][0]  # a plain Lock: follow its first candidate
        nxt = graph.threads.get(owner["tid"]) if owner and owner.get("tid") else None
        if nxt is None and owner and owner.get("pid") in graph.procs:
            proc = graph.procs[owner["pid"]]
            busy = [t for t in proc.threads if t.tid not in seen]
            nxt = next((t for t in busy if t.waits_for is not None), busy[0] if busy else None)
        th = nxt
    return "; ".join(parts)


def _process_verdict(p, cycles_tids):
    if any(t.tid in cycles_tids for t in p.threads):
        return "deadlock"
    if any(t.waits_for and t.waits_for.get("blocking") for t in p.threads):
        return "blocked"
    if any(t.klass in RUNNING for t in p.threads):
        return "busy"
    return "idle" if p.threads else None


def _groups(processes, first):
    groups = {}
    ours = {(p.pid, t.tid) for p in processes for t in p.threads if t.klass == "snapcore"}
    for p in processes:
        for th in p.threads:
            key = (tuple(th.native), tuple(python_stack(th)))
            g = groups.setdefault(key, {"count": 0, "threads": [], "stack": list(key[0])})
            g["python_stack"] = list(key[1])
            g["count"] += 1
            g["threads"].append([th.pid, th.tid])
    out = list(groups.values())
    out.sort(
        key=lambda g: (
            not any(tuple(t) in first for t in g["threads"]),
            all(tuple(t) in ours for t in g["threads"]),  # snapcore taking the snapshot: last
            -g["count"],
        )
    )
    return out


def _summary(verdict, graph, cycles, processes):
    threads = [t for p in processes for t in p.threads if t.klass != "snapcore"]
    if verdict == "deadlock":
        c = cycles[0]
        hops = "; ".join(
            f"{_who(graph.threads[n['tid']])} waits for {describe_edge(n['waits_for'])}" for n in c
        )
        more = f" (and {len(cycles) - 1} more cycle{'s' if len(cycles) > 2 else ''})"
        return f"deadlock: {hops}" + (more if len(cycles) > 1 else "")
    if verdict == "blocked":
        blocked = [t for t in threads if t.waits_for and t.waits_for.get("blocking")]
        blocked.sort(
            key=lambda t: (
                _FIRST.index(t.waits_for["kind"]) if t.waits_for["kind"] in _FIRST else len(_FIRST)
            )
        )
        return f"blocked: {_chain(graph, blocked[0])}" + (
            f" ({len(blocked)} threads blocked)" if len(blocked) > 1 else ""
        )
    if verdict == "busy":
        running = [t for t in threads if t.klass in RUNNING]
        shown = ", ".join(f"{t.tid}" + (f" ({t.name})" if t.name else "") for t in running[:4])
        return f"busy: {len(running)} thread{'s' if len(running) != 1 else ''} on CPU ({shown})"
    if not threads:
        return "idle: no thread in the snapshot"
    reasons = {}
    for t in threads:
        reason = _IDLE.get(t.waits_for["kind"]) if t.waits_for else None
        if t.klass in ("stopped", "traced", "exited"):
            reason = _STOPPED[t.klass]
        if reason is None:
            call = t.call
            reason = f"sleeping in {call['name']}" if call else "sleeping"
            reason += " (with a timeout)" if t.timeout else ""
        reasons[reason] = reasons.get(reason, 0) + 1
    shown = [
        f"{n} thread{'s' if n != 1 else ''} {r}"
        for r, n in sorted(reasons.items(), key=lambda x: -x[1])
    ]
    return (
        "idle: nothing in the snapshot holds what its threads wait for: "
        + "; ".join(shown[:5])
        + ("; ..." if len(shown) > 5 else "")
    )


# which blocked thread the summary starts from: the rarest, most telling waits first
_FIRST = ("kernel", "mutex", "rwlock", "rlock", "gil", "lock", "child", "join")
_STOPPED = {
    "stopped": "stopped (job control: SIGCONT resumes it)",
    "traced": "stopped by a tracer",
    "exited": "exited (zombie threads)",
}
_IDLE = {
    "condition": "waiting for a notification (condition variable)",
    "semaphore": "waiting on a semaphore",
    "futex": "waiting on a futex",
    "accept": "waiting for a client (accept)",
    "pipe": "waiting for input from outside the snapshot",
    "socket": "waiting for input from outside the snapshot",
    "poll": "waiting for input from outside the snapshot",
    "read": "waiting for input",
    "write": "waiting to write",
}


def _thread_json(th):
    return {
        "tid": th.tid,
        "name": th.name,
        "class": th.klass,
        "timeout": th.timeout,
        "kernel": th.kernel,
        "waits_for": th.waits_for,
        "stack": list(th.native),
        "python_stack": python_stack(th),
    }


def analyze(processes):
    """The result (module docstring) for loaded processes."""
    graph = Graph(processes)
    graph.edges()
    stuck = graph.stuck()
    cycles = graph.deadlocks(stuck)
    in_cycles = {n["tid"] for c in cycles for n in c}
    per_process = {p.pid: _process_verdict(p, in_cycles) for p in processes}
    ranked = [v for v in per_process.values() if v]
    verdict = next((v for v in VERDICTS if v in ranked), "idle")
    if cycles:
        verdict = "deadlock"
    first = {(n["pid"], n["tid"]) for c in cycles for n in c}
    return {
        "verdict": verdict,
        "summary": _summary(verdict, graph, cycles, processes),
        "deadlocks": cycles,
        "groups": _groups(processes, first),
        "processes": [
            {
                "pid": p.pid,
                "ppid": p.ppid,
                "comm": p.comm,
                "cmdline": p.cmdline,
                "core": p.core,
                "error": p.error,
                "verdict": per_process.get(p.pid),
                "unwinder": p.unwinder,
                "unfrozen": p.unfrozen,
                "kernel_state": "recorded" if p.recorded else "unknown",
                "python": None
                if p.python is None
                else {
                    "version": p.python.get("version"),
                    "source": p.python_source,
                    "gil": p.python.get("gil"),
                    "errors": p.python.get("errors") or [],
                },
                "threads": [_thread_json(t) for t in p.threads],
            }
            for p in processes
        ],
    }


def _cpu(t):
    k = t.get("kernel") or {}
    if k.get("cpu_ns") is not None:
        return k["cpu_ns"]
    if k.get("utime") is not None:
        return round(((k.get("utime") or 0) + (k.get("stime") or 0)) * 1e9)
    return None


def compare(results):
    """The last result, each group marked "stuck" (the same stacks in every
    sample, no CPU time used beyond what the snapshots cost) or "slow" (stacks
    or CPU time moved)."""
    last = dict(results[-1])
    seen = {}  # (pid, tid) -> [(stack, python, cpu)]
    for r in results:
        for p in r["processes"]:
            for t in p["threads"]:
                seen.setdefault((p["pid"], t["tid"]), []).append(
                    (tuple(t["stack"]), tuple(t["python_stack"]), _cpu(t))
                )
    groups = []
    for g in last["groups"]:
        moved, cpu = 0, 0
        for pid, tid in g["threads"]:
            hist = seen.get((pid, tid), [])
            stacks = {h[:2] for h in hist}
            times = [h[2] for h in hist if h[2] is not None]
            delta = (max(times) - min(times)) if len(times) > 1 else 0
            cpu += delta
            if len(hist) < len(results) or len(stacks) > 1 or delta > SNAPSHOT_CPU_NS * len(hist):
                moved += 1
        groups.append(dict(g, progress="slow" if moved else "stuck", moving=moved, cpu_ns_used=cpu))
    last["groups"] = groups
    last["samples"] = len(results)
    stuck = sum(1 for g in groups if g["progress"] == "stuck")
    last["summary"] += (
        f" [{len(results)} samples: {stuck} of {len(groups)} groups stuck, "
        f"{len(groups) - stuck} moving]"
    )
    return last
