"""The bundle's format, declared once: member names, the manifest, what a reader accepts.

A bundle is one zstandard frame holding a POSIX (pax) tar archive of regular
files only:

    core.PID                 a core, plain ELF (one per process: a tree has several)
    core.PID.json            its metadata record (snapcore/metadata.py), final
    manifest.json            trees only: the tree's manifest (capture/tree.py)
    sysroot/PATH             a mapped file, at the path the target knows it by:
                             the executable, and every file with a GNU build-id
    alt/KEY/PATH             a second file under a path sysroot/ already holds
                             (a tree whose processes mapped different files by
                             one name); KEY is its build-id
    bundle.json              the manifest below; the last member

``sysroot/`` is a root gdb can be pointed at as it is (``set sysroot``), so a
bundle also opens without snapcore: ``tar --zstd -xf B`` and the gdb command
`snapcore debug --print` shows.

bundle.json (schema "snapcore-bundle/1"); every key is always present:

    schema, snapcore, created (ISO 8601 UTC), host
    root_pid        the process asked for (a tree's root)
    tree            true for a tree
    cores           [{pid, ns_pid, comm, member, metadata, executable, root, files}]
                    executable: the target's path of its executable (null if
                    unknown); root: the target's root as snapcore saw it; files:
                    the paths (as the target knows them) of the files it maps
                    that the bundle describes
    files           [{path, build_id, size, sha256, member, same_as, source,
                      executable, deleted, pids, left_out}]
                    member: where the bytes are (null when left out); same_as: the
                    path whose member holds the same build-id (stored once);
                    source: where snapcore read them (/proc/PID/map_files/A-B, or
                    /proc/PID/root/PATH); left_out: why not stored, or null
    binaries        {stored, max_size, left_out}: bytes of sysroot/ and alt/, the
                    --bundle-max-size cap (null: none), how many files were left out
    members         {name: {size, sha256}} of every member but bundle.json
"""

import re

SCHEMA = "snapcore-bundle/1"
MANIFEST = "bundle.json"
TREE_MANIFEST = "manifest.json"
SYSROOT = "sysroot"
ALT = "alt"
TREE_ARCHIVE = "bundle.tar.zst"
SUFFIX = ".tar.zst"

MAX_NAME = 4096
MAX_COMPONENT = 255
_TOP = re.compile(r"core\.\d{1,10}(\.json)?")
_KEY = re.compile(r"[0-9a-f]{2,128}")


def core_member(pid):
    return f"core.{pid}"


def metadata_member(pid):
    return f"core.{pid}.json"


def _components(path):
    """The components of an absolute target path, or ValueError."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"not an absolute path: {path!r}")
    parts = path.split("/")[1:]
    for part in parts:
        if part in ("", ".", "..") or "\0" in part or len(part) > MAX_COMPONENT:
            raise ValueError(f"not a plain path: {path!r}")
    return parts


def sysroot_member(path):
    """The member holding the target's file at path (ValueError if path is odd)."""
    return "/".join([SYSROOT, *_components(path)])


def alt_member(key, path):
    if not _KEY.fullmatch(key):
        raise ValueError(f"bad key {key!r}")
    return "/".join([ALT, key, *_components(path)])


def check_member_name(name):
    """None if a reader may create this member under its directory, else why not.

    Only the names above: no absolute paths, no "." or ".." components, no
    empty components, nothing else at the top.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name:
        return "an unusable name"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") or len(p) > MAX_COMPONENT for p in parts):
        return "a path with '.', '..' or empty components"
    if len(parts) == 1:
        if name in (MANIFEST, TREE_MANIFEST) or _TOP.fullmatch(name):
            return None
        return "not a member a snapcore bundle has"
    if parts[0] == SYSROOT:
        return None
    if parts[0] == ALT and len(parts) >= 3 and _KEY.fullmatch(parts[1]):
        return None
    return "not a member a snapcore bundle has"


def is_directory_name(name):
    """Directory members a re-packed archive may carry (sysroot/, sysroot/usr, ...)."""
    name = name.rstrip("/")
    if name in (SYSROOT, ALT):
        return True
    parts = name.split("/")
    if parts[0] == ALT and len(parts) == 2:
        return bool(_KEY.fullmatch(parts[1]))
    return parts[0] in (SYSROOT, ALT) and check_member_name(name) is None
