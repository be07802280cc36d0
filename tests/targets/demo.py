"""`make demo`: snapshot a running multi-threaded program and read the core with gdb.

Starts tests/targets/bin/mt (four threads blocked in named functions), takes a
core with `python -m snapcore`, shows that the target kept running, prints
gdb's `thread apply all bt` of the core, then stops the target.
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from support.procs import assert_runs_on  # noqa: E402
from support.targets import Target, target_path  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "demo-out")


def main():
    os.makedirs(OUT, exist_ok=True)
    exe = target_path("mt")
    with Target([exe]) as t:
        t.wait_blocked()
        core = os.path.join(OUT, f"core.{t.pid}")
        print(f"$ python -m snapcore {t.pid} -o {os.path.relpath(core)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", "snapcore", str(t.pid), "-o", core, "--force"])
        if rc != 0:
            return rc
        assert_runs_on(t)
        print(f"target {t.pid} is still running, untraced (ticks {t.ping()})\n", flush=True)
        if not shutil.which("gdb"):
            print("gdb is not installed: skipping the backtrace (apt-get install gdb)")
            return 0
        cmd = [
            "gdb",
            "-nx",
            "-batch",
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            "thread apply all bt",
            exe,
            core,
        ]
        print(
            "$ gdb -batch -ex 'thread apply all bt' "
            f"{os.path.relpath(exe)} {os.path.relpath(core)}",
            flush=True,
        )
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        print(out.stdout)
        missing = [
            fn
            for fn in ("command_loop", "sleeper_thread", "cond_waiter_thread", "pipe_reader_thread")
            if fn not in out.stdout
        ]
        if missing:
            print(f"demo: gdb did not show {missing}", file=sys.stderr)
            return 1
    print(f"target stopped; the core stays in {os.path.relpath(OUT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
