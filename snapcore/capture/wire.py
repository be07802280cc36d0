"""The helper's wire format: frames over a Unix socket pair.

    frame = u32 length (little-endian) + pickle of the message; file
            descriptors ride on the length word (SCM_RIGHTS)

Both ends read whole frames only, so nothing of a later message is consumed;
see helper.py for the messages.
"""

import pickle
import socket
import struct
from dataclasses import dataclass

_LEN = struct.Struct("<I")
EXIT_CRASHED = 70  # a helper that failed outside any request


@dataclass
class JobSpec:
    """One core for the helper to write (the request, as the caller resolved it)."""

    pid: int
    path: str  # for messages; the bytes go to the fd sent along
    options: object  # request.SnapshotOptions
    status: object  # procfs.Status before the freeze (None: the helper reads it)
    facts: dict  # metadata.process_facts
    started: float  # time.time() when the snapshot began
    t0: float  # time.monotonic() then (CLOCK_MONOTONIC is system-wide)
    progress: bool = True  # send progress frames (never while dumping the caller)


# ---------------------------------------------------------------------------
# the wire


def send(sock, obj, fds=()):
    data = pickle.dumps(obj, protocol=4)
    head = _LEN.pack(len(data))
    if fds:
        socket.send_fds(sock, [head], list(fds))
    else:
        sock.sendall(head)
    sock.sendall(data)


def _recv_exact(sock, n, fds):
    buf = bytearray()
    while len(buf) < n:
        data, anc, _, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16 * 4))
        if not data:
            return None
        buf += data
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                cut = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"<{cut // 4}i", payload[:cut]))
    return bytes(buf)


def recv(sock):
    """(message, [fds]); (None, []) at EOF."""
    fds = []
    head = _recv_exact(sock, _LEN.size, fds)
    if head is None:
        return None, fds
    body = _recv_exact(sock, _LEN.unpack(head)[0], fds)
    if body is None:
        return None, fds
    return pickle.loads(body), fds
