"""Each error of the API produced by a real situation, and the CLI's answer to it."""

import contextlib
import importlib
import io
import os
import pickle
import pkgutil
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

import snapcore
import snapcore.cli


def _import_everything():
    """Import every snapcore module now: children that drop to nobody may not be able
    to read the source tree (a clean clone in a 0700 temporary directory)."""
    for m in pkgutil.walk_packages(snapcore.__path__, "snapcore."):
        if m.name != "snapcore.__main__":
            importlib.import_module(m.name)


_import_everything()
from support.procs import (  # noqa: E402
    assert_one_line_error,
    assert_runs_on,
    snapcore_cli,
    task_states,
)
from support.strict import need_root, need_tool  # noqa: E402

NOBODY = 65534


def unused_pid():
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while pid > 1:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1
    raise RuntimeError("no free pid")


def in_child_as(uid, fn, timeout=60):
    """Run fn() in a forked child with uid/gid dropped; return what it returned or raised."""
    r, w = os.pipe()
    # a fork, not a fresh interpreter: nobody cannot reach this Python (under
    # /root/.pyenv, or a venv in a private directory).  The child only calls
    # snapcore, which takes no lock another thread of pytest could hold.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                result = ("ok", fn())
            except BaseException as exc:  # report it to the parent
                result = ("raised", exc)
            try:
                data = pickle.dumps(result)
            except Exception:
                data = pickle.dumps(("raised", RuntimeError(repr(result))))
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("child did not finish")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks))


# --- no such process ----------------------------------------------------------


def test_no_such_process(tmp_path):
    pid = unused_pid()
    with pytest.raises(snapcore.NoSuchProcess) as ei:
        snapcore.snapshot(pid, tmp_path / "core")
    assert isinstance(ei.value, ProcessLookupError)
    assert ei.value.pid == pid
    assert not (tmp_path / "core").exists()
    assert os.listdir(tmp_path) == []
    p = snapcore_cli(pid, "-o", tmp_path / "core")
    assert_one_line_error(p, 1, f"no process with pid {pid}")


@pytest.mark.parametrize("bad", [0, -1])
def test_nonpositive_pid(bad, tmp_path):
    with pytest.raises(snapcore.NoSuchProcess):
        snapcore.snapshot(bad, tmp_path / "core")


@pytest.mark.parametrize("arg", ["0", "-1", "abc", "1.5", ""])
def test_cli_rejects_bad_pid_text(arg):
    p = snapcore_cli(arg)
    assert_one_line_error(p, 2, "pid")


def test_cli_usage_without_arguments():
    p = snapcore_cli()
    assert_one_line_error(p, 2)


def test_thread_id_is_not_a_process(mt, tmp_path):
    tid = mt.info["tids"][1]
    with pytest.raises(snapcore.NoSuchProcess, match=f"thread of process {mt.pid}"):
        snapcore.snapshot(tid, tmp_path / "core")
    assert_runs_on(mt)


# --- zombie, kernel thread, self ----------------------------------------------------


def test_zombie(tmp_path):
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while task_states(child.pid)[child.pid][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(snapcore.ZombieProcess):
            snapcore.snapshot(child.pid, tmp_path / "core")
        p = snapcore_cli(child.pid, "-o", tmp_path / "core")
        assert_one_line_error(p, 1, "zombie")
    finally:
        child.wait(timeout=10)
    assert not (tmp_path / "core").exists()


def test_kernel_thread(tmp_path):
    with pytest.raises(snapcore.KernelThread):
        snapcore.snapshot(2, tmp_path / "core")
    p = snapcore_cli(2, "-o", tmp_path / "core")
    assert_one_line_error(p, 1, "kernel thread")


# --- permissions and tracers -----------------------------------------------------------


def test_access_denied_as_nobody(mt, tmp_path):
    need_root("dropping to nobody")

    # reachable by nobody: in /tmp (1777) itself, not under $TMPDIR, which may sit in a
    # private directory (nox's session tmp inside a clone made under `mktemp -d`)
    shared = tempfile.mkdtemp(prefix="snapcore-nobody-", dir="/tmp")
    os.chmod(shared, 0o777)
    try:
        _access_denied_as_nobody(mt, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _access_denied_as_nobody(mt, tmp_path):
    out = os.path.join(tmp_path, "core")

    result = in_child_as(NOBODY, lambda: snapcore.snapshot(mt.pid, out))
    assert result[0] == "raised", result
    exc = result[1]
    assert isinstance(exc, snapcore.AccessDenied), repr(exc)
    assert isinstance(exc, PermissionError)
    assert "run as the target's user or as root (CAP_SYS_PTRACE)" in str(exc), str(exc)

    def cli():
        main = snapcore.cli.main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([str(mt.pid), "-o", out])
        return code, err.getvalue()

    code, err = in_child_as(NOBODY, cli)[1]
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("snapcore: error: cannot trace process")
    assert not os.path.exists(out)
    assert [n for n in os.listdir(tmp_path)] == []
    assert_runs_on(mt)


def test_already_traced_names_the_tracer(mt, tmp_path):
    need_tool("gdb")
    gdb = subprocess.Popen(
        ["gdb", "-nx", "-batch", "-p", str(mt.pid), "-ex", "shell sleep 3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while task_states(mt.pid)[mt.pid][1] == 0:
            assert time.monotonic() < deadline, "gdb did not attach"
            time.sleep(0.01)
        with pytest.raises(snapcore.AlreadyTraced) as ei:
            snapcore.snapshot(mt.pid, tmp_path / "core")
        assert ei.value.tracer_pid == gdb.pid
        assert f"traced by PID {gdb.pid} (gdb)" in str(ei.value)
        p = snapcore_cli(mt.pid, "-o", tmp_path / "core")
        assert_one_line_error(p, 1, f"traced by PID {gdb.pid} (gdb)")
        gdb.wait(timeout=30)
    finally:
        if gdb.poll() is None:
            gdb.kill()
            gdb.wait(timeout=10)
    assert not (tmp_path / "core").exists()
    assert_runs_on(mt)


# --- output ------------------------------------------------------------------------------


def test_existing_output_is_refused_then_forced(mt, tmp_path):
    dest = tmp_path / "core"
    dest.write_bytes(b"precious")
    with pytest.raises(snapcore.OutputExists):
        snapcore.snapshot(mt.pid, dest)
    assert dest.read_bytes() == b"precious"
    p = snapcore_cli(mt.pid, "-o", dest)
    assert_one_line_error(p, 1, "already exists", "--force")
    s = snapcore.snapshot(mt.pid, dest, force=True)
    assert dest.read_bytes()[:4] == b"\x7fELF"
    assert s.path == str(dest)
    assert sorted(os.listdir(tmp_path)) == ["core"]
    assert_runs_on(mt)


def test_symlink_at_destination_is_not_followed(mt, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    link = tmp_path / "core"
    link.symlink_to(victim)
    with pytest.raises(snapcore.OutputExists):
        snapcore.snapshot(mt.pid, link)
    snapcore.snapshot(mt.pid, link, force=True)
    assert victim.read_bytes() == b"keep me"
    assert not link.is_symlink()
    assert_runs_on(mt)


def test_output_directory_missing(mt, tmp_path):
    dest = tmp_path / "no" / "such" / "dir" / "core"
    with pytest.raises(snapcore.OutputError):
        snapcore.snapshot(mt.pid, dest)
    p = snapcore_cli(mt.pid, "-o", dest)
    assert_one_line_error(p, 1, "cannot create")
    assert_runs_on(mt)


# --- the CLI's success line ------------------------------------------------------------


def test_cli_success_prints_one_summary_line(mt, tmp_path):
    p = snapcore_cli(mt.pid, "-o", tmp_path / "core")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    assert str(tmp_path / "core") in lines[0] and f"pid {mt.pid}" in lines[0]
    assert "4 threads" in lines[0]
    assert p.stderr == ""
    assert_runs_on(mt)


def test_cli_quiet_and_console_script(mt, tmp_path):
    p = snapcore_cli(mt.pid, "-o", tmp_path / "core", "-q")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""
    # the console script pip installed beside this interpreter
    exe = os.path.join(os.path.dirname(sys.executable), "snapcore")
    p2 = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert p2.returncode == 0 and p2.stdout == f"snapcore {snapcore.__version__}\n", p2
    assert_runs_on(mt)
