"""support/session.py: machine-wide settings changed by the first holder, put back by
the last, whoever else holds them meanwhile (on files standing in for /proc/sys)."""

import json
import os

import pytest

from support import session


@pytest.fixture
def fake(tmp_path, monkeypatch):
    files = {}

    def path(name):
        return str(files.setdefault(name, tmp_path / name))

    monkeypatch.setattr(session, "_path", path)
    monkeypatch.setattr(session, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(session, "LOCK", str(tmp_path / "state" / "lock"))
    monkeypatch.setattr(session, "STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setattr(session.os, "geteuid", lambda: 0)

    def put(name, value):
        with open(path(name), "w") as f:
            f.write(value + "\n")

    put("kernel.core_pattern", "|/usr/lib/systemd/systemd-coredump %P")
    put("vm.nr_hugepages", "0")
    return put


def test_first_holder_sets_last_puts_back(fake):
    want = {"kernel.core_pattern": ("eq", "core")}
    assert session.hold(want, "a") == {"kernel.core_pattern": "core"}
    assert session.hold(want, "b") == {"kernel.core_pattern": "core"}
    session.release("a")
    assert session.read_sysctl("kernel.core_pattern") == "core"  # b still holds it
    session.release("b")
    assert session.read_sysctl("kernel.core_pattern") == "|/usr/lib/systemd/systemd-coredump %P"


def test_min_settings_and_missing_ones(fake):
    got = session.hold({"vm.nr_hugepages": ("min", 2), "kernel.no_such": ("eq", "1")}, "t")
    assert got == {"vm.nr_hugepages": "2", "kernel.no_such": None}
    session.release("t")
    assert session.read_sysctl("vm.nr_hugepages") == "0"


def test_a_holder_that_died_is_noticed(fake):
    session.hold({"kernel.core_pattern": ("eq", "core")}, "a")
    with open(session.STATE) as f:
        state = json.load(f)
    state["holders"][0]["start"] = -1  # as if its process had exited and the pid was reused
    with open(session.STATE, "w") as f:
        json.dump(state, f)
    # the next session finds no live holder: it puts the value back before holding
    session.hold({"vm.nr_hugepages": ("min", 1)}, "b")
    assert session.read_sysctl("kernel.core_pattern").startswith("|")
    session.release("b")
    assert os.path.exists(session.STATE)
