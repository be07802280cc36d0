"""The wait-for graph: what each thread waits on, who holds it, and the cycles.

    Graph(processes).edges()   sets Thread.waits_for on every waiting thread
    Graph.deadlocks()          [[{pid, tid, waits_for}, ...]] the cycles

An edge is {"kind", "address", "owner": {"pid", "tid"} | null, ...}; how each
kind is found:

    futex on the GIL's condition (inside _PyRuntime / the interpreter)
                   -> "gil": the GIL's last holder, while it is locked
    futex on a Python lock a frame of the thread references (cpython/walk.py)
                   -> "rlock": its rlock_owner (a pthread_t: a thread's fs_base)
                   -> "lock": a plain threading.Lock records no owner; threads
                      whose frames hold a reference to it are named candidates
                   -> "condition" (threading.Condition.wait), "join" (Thread.join)
    futex, LOCK_PI -> "mutex": the owner tid is in the lock word
    futex on a glibc mutex (__lll_lock_wait in the stack, or a contended lock
                   word 2 whose __owner is a thread of the snapshot)
                   -> "mutex": pthread_mutex_t.__owner
    futex in pthread_rwlock_*                -> "rwlock": __cur_writer
    futex in pthread_cond_* / sem_*          -> "condition" / "semaphore" (no owner)
    wait4, waitid  -> "child": that child, or every child for "any"
    read, recv*, write, send* on a pipe or FIFO
                   -> "pipe": the processes holding the other end (fd tables
                      recorded at capture; the fd's access mode tells the ends)
    ... on a Unix socket -> "socket": the processes holding its peer (sock_diag)
    poll, select, epoll_wait -> the same, over every fd watched
    accept         -> "accept" (waits for a client: no owner)
    D state        -> "kernel" (uninterruptible; see the kernel stack)

An owner outside the snapshot (a pipe's writer that is not in the tree, a
socket peer in another namespace) is null, and such a wait is "external".

Deadlocks: a thread is stuck when what it waits for is held by a stuck
thread; a process is stuck when all its threads are.  Threads that can make
progress on their own (on CPU, sleeping with a timeout, waiting for input
from outside) are free, and so is whatever waits only on them.  The stuck
set is the greatest fixpoint; every cycle inside it is reported.
"""

from .threadstate import FUTEX_CMD_MASK, FUTEX_LOCK_PI, FUTEX_LOCK_PI2, nohang

FUTEX_CALLS = frozenset({"futex", "futex_time64", "futex_wait"})
WAIT_CALLS = frozenset({"wait4", "waitid", "waitpid"})
READ_CALLS = frozenset(
    {"read", "readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"}
)
WRITE_CALLS = frozenset({"write", "writev", "pwrite64", "pwritev", "sendto", "sendmsg"})
POLL_CALLS = frozenset({"poll", "ppoll", "ppoll_time64"})
SELECT_CALLS = frozenset({"select", "_newselect", "pselect6", "pselect6_time64"})
EPOLL_CALLS = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
ACCEPT_CALLS = frozenset({"accept", "accept4"})
BLOCKING = frozenset({"mutex", "rwlock", "rlock", "lock", "gil", "child", "join", "kernel"})
POLLIN, POLLOUT = 0x1, 0x4
P_ALL, P_PID = 0, 1
TID_MASK = 0x3FFFFFFF
MAX_CYCLES = 32


def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _edge(kind, address=None, owner=None, **extra):
    e = {"kind": kind, "address": address, "owner": owner}
    e.update(extra)
    return e


def _innermost(th):
    frames = (th.python or {}).get("frames") or []
    return frames[0] if frames else None


def _shown_frame(f):
    return f"{f['name']} ({f['file'].rsplit('/', 1)[-1]}:{f['line']})"


class Graph:
    def __init__(self, processes):
        self.procs = {p.pid: p for p in processes if p.pid is not None}
        self.threads = {}  # tid -> Thread
        self.idents = {}  # (pid, pthread ident) -> tid
        for p in self.procs.values():
            tp = p.arch.thread_pointer_reg if p.arch is not None else ""
            for th in p.threads:
                self.threads[th.tid] = th
                if tp and th.regs.get(tp):
                    self.idents[(p.pid, th.regs[tp])] = th.tid
                ident = (th.python or {}).get("ident")
                if ident:
                    self.idents[(p.pid, ident)] = th.tid
        self.holders = {}  # fd target -> [(pid, fd, mode)]
        for p in self.procs.values():
            for fd, entry in ((p.facts or {}).get("fds") or {}).items():
                self.holders.setdefault(entry.get("target"), []).append(
                    (p.pid, int(fd), entry.get("mode"))
                )

    # -- edges --------------------------------------------------------------
    def edges(self):
        for p in self.procs.values():
            for th in p.threads:
                th.waits_for = self.edge(p, th)
                if th.waits_for is not None:
                    kind = th.waits_for["kind"]
                    th.waits_for["blocking"] = kind in BLOCKING or (
                        kind in ("pipe", "socket", "poll") and th.waits_for["owner"] is not None
                    )

    def edge(self, p, th):
        if th.klass == "uninterruptible":
            return _edge(
                "kernel",
                detail=f"uninterruptible in {th.kernel.get('wchan') or 'the kernel'}",
            )
        call = th.call
        if call is None or th.klass not in ("sleeping", "in-syscall"):
            return None
        name, args = call["name"], call["args"]
        if name in FUTEX_CALLS:
            return self._futex(p, th, args)
        if name in WAIT_CALLS:
            return None if nohang(call) else self._child(p, name, args)
        if name in READ_CALLS:
            return self._fd(p, _s32(args[0]), reading=True)
        if name in WRITE_CALLS:
            return self._fd(p, _s32(args[0]), reading=False)
        if name in POLL_CALLS:
            fds = [
                (fd, not ev & POLLOUT or ev & POLLIN) for fd, ev in th.kernel.get("pollfds") or []
            ]
            return self._many(p, fds)
        if name in SELECT_CALLS:
            sets = th.kernel.get("selectfds") or {}
            fds = [(fd, True) for fd in sets.get("read", [])]
            fds += [(fd, False) for fd in sets.get("write", [])]
            return self._many(p, fds)
        if name in EPOLL_CALLS:
            watched = ((p.facts or {}).get("epoll") or {}).get(str(_s32(args[0])))
            return self._many(p, [(fd, True) for fd in watched or []])
        if name in ACCEPT_CALLS:
            return _edge("accept", fd=_s32(args[0]), detail="waits for a client to connect")
        return None

    def _owner_of_tid(self, p, tid):
        th = self.threads.get(tid)
        return {"pid": th.pid if th is not None else p.pid, "tid": tid}

    def _futex(self, p, th, args):
        uaddr, op = args[0], args[1] & FUTEX_CMD_MASK
        gil = (p.python or {}).get("gil")
        if gil and gil["address"] <= uaddr < gil["address"] + gil["size"]:
            holder = gil.get("holder") if gil.get("locked") else None
            owner = self._owner_of_tid(p, holder) if holder else None
            return _edge("gil", gil["address"], owner, detail="waits for the GIL")
        python = self._python_lock(p, th, uaddr)
        if python is not None:
            return python
        if op in (FUTEX_LOCK_PI, FUTEX_LOCK_PI2):
            word = self._u32(p, th, uaddr)
            owner = word & TID_MASK if word else 0
            return _edge("mutex", uaddr, self._owner_of_tid(p, owner) if owner else None)
        native = " ".join(th.native)
        if "rwlock" in native:
            return self._rwlock(p, th, uaddr)
        if "cond_wait" in native or "cond_timedwait" in native or "cond_clockwait" in native:
            return _edge("condition", uaddr, detail="pthread_cond_wait")
        owner = self._i32(p, th, uaddr + p.arch.mutex_owner_offset)
        lockword = self._u32(p, th, uaddr)
        mutex_stack = "lll_lock_wait" in native or "mutex_lock" in native
        if mutex_stack or (lockword == 2 and args[2] == 2 and owner in self.threads):
            return _edge(
                "mutex",
                uaddr,
                self._owner_of_tid(p, owner) if owner and owner > 0 else None,
                **self._gone(owner),
            )
        if "sem_wait" in native or "sem_timedwait" in native or "sem_clockwait" in native:
            return _edge("semaphore", uaddr)
        inner = _innermost(th)
        if inner is not None and inner["file"].endswith("threading.py"):
            if inner["name"] in ("join", "_wait_for_tstate_lock"):
                return _edge("join", None, None, detail="Thread.join()")
        return _edge("futex", uaddr)

    def _gone(self, tid):
        if tid and tid > 0 and tid not in self.threads:
            return {"detail": f"owner thread {tid} is not in the snapshot (it exited holding it?)"}
        return {}

    def _rwlock(self, p, th, uaddr):
        for off in p.arch.rwlock_futex_offsets:
            base = uaddr - off
            writer = self._i32(p, th, base + p.arch.rwlock_writer_offset)
            if writer and writer in self.threads:
                return _edge("rwlock", base, self._owner_of_tid(p, writer))
        return _edge("rwlock", uaddr, None, detail="held by readers (their tids are not recorded)")

    def _python_lock(self, p, th, uaddr):
        py = th.python or {}
        for lock in py.get("locks") or []:
            if lock.get("lock") != uaddr:
                continue
            inner = _innermost(th)
            if inner is not None and inner["file"].endswith("threading.py"):
                if inner["name"] == "wait":
                    return _edge("condition", lock["object"], detail="threading.Condition.wait()")
                if inner["name"] in ("join", "_wait_for_tstate_lock"):
                    return _edge("join", lock["object"], detail="Thread.join()")
            if lock["type"] == "RLock" and lock.get("owner"):
                tid = self.idents.get((p.pid, lock["owner"]))
                owner = {"pid": p.pid, "tid": tid} if tid else None
                extra = {} if tid else {"detail": f"owner ident {lock['owner']:#x} is no thread"}
                return _edge(
                    "rlock", lock["object"], owner, lock=uaddr, count=lock.get("count"), **extra
                )
            return _edge(
                "lock",
                lock["object"],
                None,
                lock=uaddr,
                detail="a threading.Lock records no owner",
                candidates=self._lock_candidates(p, th, lock["object"]),
            )
        return None

    def _lock_candidates(self, p, waiter, obj):
        out = []
        for th in p.threads:
            if th is waiter:
                continue
            for lock in (th.python or {}).get("locks") or []:
                if lock["object"] == obj:
                    frames = th.python.get("frames") or []
                    where = frames[lock["frame"]] if lock["frame"] < len(frames) else None
                    out.append(
                        {
                            "pid": p.pid,
                            "tid": th.tid,
                            "why": "references it in "
                            + (_shown_frame(where) if where else "a frame")
                            + " (e.g. inside `with lock:`)",
                        }
                    )
                    break
        return out

    def _child(self, p, name, args):
        if name == "waitid":
            idtype, ident = args[0], _s32(args[1])
            target = ident if idtype == P_PID else -1
        else:
            target = _s32(args[0])
        if target > 0:
            owners = [target]
        else:
            owners = list((p.facts or {}).get("children") or [])
            owners += [q.pid for q in self.procs.values() if q.ppid == p.pid]
            owners = sorted(set(owners))
        owner = {"pid": owners[0], "tid": None} if owners else None
        extra = {"owners": [{"pid": c, "tid": None} for c in owners]} if len(owners) > 1 else {}
        if not owners:
            extra["detail"] = "no child in the snapshot"
        return _edge("child", None, owner, **extra)

    def _fd(self, p, fd, reading):
        entry = ((p.facts or {}).get("fds") or {}).get(str(fd))
        if entry is None:
            return _edge("read" if reading else "write", None, None, fd=fd, external=True)
        target = entry["target"]
        if target.startswith("pipe:") or (target.startswith("/") and entry.get("mode")):
            want = ("w", "rw") if reading else ("r", "rw")
            pids = sorted({pid for pid, _, mode in self.holders.get(target, []) if mode in want})
            kind = "pipe"
        elif target.startswith("socket:"):
            peer = ((p.facts or {}).get("unix_peers") or {}).get(target[8:-1])
            pids = sorted({pid for pid, _, _ in self.holders.get(f"socket:[{peer}]", [])})
            kind = "socket"
        else:
            return _edge("read" if reading else "write", None, None, fd=fd, target=target)
        extra = {"fd": fd, "target": target}
        if len(pids) > 1:
            extra["owners"] = [{"pid": x, "tid": None} for x in pids]
        if not pids:
            extra["external"] = True
            extra["detail"] = "the other end is held outside the snapshot"
        owner = {"pid": pids[0], "tid": None} if pids else None
        return _edge(kind, None, owner, **extra)

    def _many(self, p, fds):
        if not fds:
            return None  # poll(NULL, 0, t), select(0, ...): a sleep
        edges = [self._fd(p, fd, reading) for fd, reading in fds]
        if len(edges) == 1:
            return edges[0]
        owners = []
        for e in edges:
            for o in e.get("owners") or ([e["owner"]] if e["owner"] else []):
                if o not in owners:
                    owners.append(o)
        extra = {"fds": [fd for fd, _ in fds]}
        if len(owners) > 1:
            extra["owners"] = owners
        if not owners:
            extra["external"] = True
        return _edge("poll", None, owners[0] if owners else None, **extra)

    # -- memory -------------------------------------------------------------
    def _word(self, p, th, addr, size, signed):
        fut = th.kernel.get("futex") or {}
        start, words = fut.get("words_at"), fut.get("words")
        data = b""
        if start is not None and words and start <= addr and addr + size <= start + len(words) // 2:
            raw = bytes.fromhex(words)
            data = raw[addr - start : addr - start + size]
        elif p.mem is not None:
            data = p.mem.read(addr, size)
        if len(data) != size:
            return None
        return int.from_bytes(data, "little", signed=signed)

    def _u32(self, p, th, addr):
        return self._word(p, th, addr, 4, False)

    def _i32(self, p, th, addr):
        return self._word(p, th, addr, 4, True)

    # -- deadlocks ----------------------------------------------------------
    def _targets(self, edge):
        """The nodes an edge waits on: ("t", tid) or ("p", pid) (any of its threads)."""
        owners = edge.get("owners") or ([edge["owner"]] if edge.get("owner") else [])
        out = []
        for o in owners:
            if o.get("tid") is not None:
                out.append(("t", o["tid"]))
            elif o.get("pid") is not None:
                out.append(("p", o["pid"]))
        return out

    def _node_stuck(self, node, stuck):
        kind, ident = node
        if kind == "t":
            # an owner that is gone never releases what it holds
            return ident in stuck or ident not in self.threads
        proc = self.procs.get(ident)
        if proc is None or not proc.threads:
            return False  # outside the snapshot: it may well make progress
        return all(th.tid in stuck for th in proc.threads)

    def stuck(self):
        """The tids of the threads that can never make progress (greatest fixpoint)."""
        stuck = set()
        for th in self.threads.values():
            e = th.waits_for
            if e is None or not e.get("blocking") or not self._targets(e):
                continue
            if th.timeout and e["kind"] != "gil":  # (a GIL waiter wakes every 5 ms)
                continue
            stuck.add(th.tid)
        changed = True
        while changed:
            changed = False
            for tid in sorted(stuck):
                targets = self._targets(self.threads[tid].waits_for)
                if not all(self._node_stuck(n, stuck) for n in targets):
                    stuck.discard(tid)
                    changed = True
        return stuck

    def _successors(self, tid, stuck):
        out = []
        for kind, ident in self._targets(self.threads[tid].waits_for):
            if kind == "t":
                if ident in stuck:
                    out.append(ident)
            else:
                out += [t.tid for t in self.procs[ident].threads if t.tid in stuck]
        return out

    def deadlocks(self, stuck=None):
        """Every cycle among the stuck threads, each once, smallest tid first."""
        stuck = self.stuck() if stuck is None else stuck
        cycles, seen, done = [], set(), set()
        for start in sorted(stuck):
            if start in done:
                continue
            path, index, stack = [], {}, [(start, iter(self._successors(start, stuck)))]
            path.append(start)
            index[start] = 0
            while stack and len(cycles) < MAX_CYCLES:
                node, succ = stack[-1]
                nxt = next(succ, None)
                if nxt is None:
                    stack.pop()
                    done.add(node)
                    index.pop(path.pop(), None)
                    continue
                if nxt in index:
                    cycle = path[index[nxt] :]
                    k = cycle.index(min(cycle))
                    cycle = tuple(cycle[k:] + cycle[:k])
                    if cycle not in seen:
                        seen.add(cycle)
                        cycles.append(cycle)
                elif nxt not in done:
                    index[nxt] = len(path)
                    path.append(nxt)
                    stack.append((nxt, iter(self._successors(nxt, stuck))))
        return [
            [
                {"pid": self.threads[t].pid, "tid": t, "waits_for": self.threads[t].waits_for}
                for t in cycle
            ]
            for cycle in cycles
        ]
