"""Unix socket peers from the kernel's sock_diag netlink interface.

    unix_peers(inodes) -> {inode: peer inode} for the given socket inodes

One SOCK_DIAG_BY_FAMILY dump of AF_UNIX sockets (net/unix/diag.c), asking
for UNIX_DIAG_PEER: the inode of the socket at the other end of a connected
or paired socket (socketpair(), a connected stream).  The dump
covers snapcore's network namespace; sockets of another namespace are not
found and get no peer.  Without sock_diag (no CONFIG_UNIX_DIAG) the answer
is empty: a reader of such a socket then has no known other end.

Layouts (include/uapi/linux/netlink.h, sock_diag.h, unix_diag.h):

    nlmsghdr      u32 len, u16 type, u16 flags, u32 seq, u32 pid
    unix_diag_req u8 family, u8 protocol, u16 pad, u32 states, u32 ino,
                  u32 show, u32 cookie[2]
    unix_diag_msg u8 family, u8 type, u8 state, u8 pad, u32 ino, u32 cookie[2]
    then rtattrs  u16 len, u16 type, payload (4-byte aligned)
"""

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_PEER = 0x4
UDIAG_SHOW_ICONS = 0x8
UNIX_DIAG_PEER = 2
UNIX_DIAG_ICONS = 3

_NLMSGHDR = struct.Struct("<IHHII")
_REQ = struct.Struct("<BBHIII2I")
_MSG = struct.Struct("<BBBBI2I")
_RTA = struct.Struct("<HH")
TIMEOUT = 1.0


def _align4(n):
    return (n + 3) & ~3


def parse_messages(data):
    """[(ino, peer or None, [icons])] from one recv() of sock_diag replies;
    'done' when the dump ended.  Raises OSError on a netlink error."""
    out, off, done = [], 0, False
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _, _, _ = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        body = data[off + _NLMSGHDR.size : off + length]
        off += _align4(length)
        if mtype == NLMSG_DONE:
            done = True
            break
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("<i", body)[0] if len(body) >= 4 else 0
            if err:
                raise OSError(err, "sock_diag")
            continue
        if mtype != SOCK_DIAG_BY_FAMILY or len(body) < _MSG.size:
            continue
        ino = _MSG.unpack_from(body)[4]
        peer, icons = None, []
        pos = _MSG.size
        while pos + _RTA.size <= len(body):
            rlen, rtype = _RTA.unpack_from(body, pos)
            if rlen < _RTA.size:
                break
            payload = body[pos + _RTA.size : pos + rlen]
            if rtype == UNIX_DIAG_PEER and len(payload) >= 4:
                peer = struct.unpack_from("<I", payload)[0]
            elif rtype == UNIX_DIAG_ICONS:
                icons = [v for (v,) in struct.iter_unpack("<I", payload[: len(payload) // 4 * 4])]
            pos += _align4(rlen)
        out.append((ino, peer, icons))
    return out, done


def unix_peers(inodes):
    """{inode: peer inode} of the sockets among inodes that have a peer."""
    wanted = set(inodes)
    if not wanted:
        return {}
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 4)
    except OSError:
        return {}
    out = {}
    try:
        sock.settimeout(TIMEOUT)
        req = _REQ.pack(
            socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF
        )
        hdr = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        sock.sendto(hdr + req, (0, 0))
        done = False
        while not done:
            data = sock.recv(1 << 16)
            if not data:
                break
            msgs, done = parse_messages(data)
            for ino, peer, _ in msgs:
                if ino in wanted and peer:
                    out[ino] = peer
    except OSError:
        pass
    finally:
        sock.close()
    return out
