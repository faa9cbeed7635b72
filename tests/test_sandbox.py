"""Hostile programs are contained by the sandbox with the right verdict, and the host (this
pytest process, its files, its loopback listeners) is unaffected.

Tests whose containment rests on a mechanism the machine lacks are skipped, naming it
(``sandbox_capabilities()``); docs/sandbox.md lists what holds where.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from t2ray.sandbox import SandboxLimits, SandboxPool, run_python, runner, sandbox_capabilities

CAPS = sandbox_capabilities()
FAST = SandboxLimits(cpu_s=2, wall_s=4, memory_mb=256, max_procs=8,
                     max_output_bytes=64 << 10, max_file_bytes=1 << 20)


def needs(*mechanisms: str) -> pytest.MarkDecorator:
    missing = [m for m in mechanisms if not CAPS[m]]
    return pytest.mark.skipif(bool(missing), reason=f"sandbox lacks {missing} here")


def run(source: str, limits: SandboxLimits = FAST, stdin: str = ""):
    return run_python(textwrap.dedent(source), limits, stdin)


def alive_pids_of_uid(uid: int) -> list[int]:
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path("/proc", name, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["Uid"].split()[0] == str(uid) and not fields["State"].strip().startswith("Z"):
            pids.append(int(name))
    return pids


def test_capabilities_are_reported():
    assert CAPS and all(isinstance(v, bool) for v in CAPS.values())
    assert CAPS["process_group"] and CAPS["rlimits"] and CAPS["audit_hook"]


def test_passing_failing_and_stdin():
    ok = run("print(sum(range(10)))")
    assert (ok.verdict, ok.returncode, ok.stdout) == ("passed", 0, "45\n") and ok.passed
    bad = run("def f():\n    return 1\n\nassert f() == 2, 'wrong'\n")
    assert (bad.verdict, bad.returncode) == ("failed", 1) and not bad.passed
    # The traceback is the program's, with its source line, without the bootstrap's frames.
    assert "assert f() == 2" in bad.stderr and "AssertionError: wrong" in bad.stderr
    assert "runner.py" not in bad.stderr
    assert run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    syntax = run("def broken(:\n")
    assert syntax.verdict == "failed" and "SyntaxError" in syntax.stderr


def test_cpu_bound_infinite_loop_times_out():
    r = run("while True:\n    pass\n", SandboxLimits(cpu_s=1, wall_s=4))
    assert r.verdict == "timeout" and r.wall_s < 4.5


def test_sleeping_program_hits_the_wall_clock():
    r = run("import time\nprint('started', flush=True)\ntime.sleep(60)\n",
            SandboxLimits(cpu_s=5, wall_s=1.5))
    assert r.verdict == "timeout" and r.stdout == "started\n"
    assert 1.5 <= r.wall_s < 3


@needs("setuid", "cgroup_pids")
def test_fork_bomb_is_capped_and_reaped():
    r = run("""
        import os, time
        forked = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
        print(forked, os.getpgrp(), os.getuid(), flush=True)
        time.sleep(60)
    """, SandboxLimits(cpu_s=5, wall_s=3, max_procs=8))
    assert r.verdict == "timeout", r
    forked, pgid, uid = map(int, r.stdout.split())
    assert 0 < forked < 8  # the main process is one of the 8 tasks
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert alive_pids_of_uid(uid) == []


FORK_COUNTER = """import os, time
forked = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    forked += 1
print(forked)
"""


@pytest.mark.parametrize("mechanism", ["setuid", "cgroup_pids"])
def test_each_process_cap_binds_on_its_own(mechanism):
    """RLIMIT_NPROC under the dedicated uid, and pids.max even for a root program, each cap a
    fork bomb without the other (internal plan API: one mechanism switched off)."""
    if not CAPS[mechanism]:
        pytest.skip(f"sandbox lacks {mechanism} here")
    full = runner._plan()
    plan = replace(full, setuid=mechanism == "setuid",
                   cgroup=full.cgroup if mechanism == "cgroup_pids" else None)
    r = runner._run(FORK_COUNTER, SandboxLimits(wall_s=4, max_procs=6), "", plan)
    assert r.passed, r
    assert 0 < int(r.stdout) < 6


def test_memory_bomb():
    r = run("blob = bytearray(3 * 1024**3)\n")
    assert r.verdict == "memory" and "MemoryError" in r.stderr
    growing = run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n")
    assert growing.verdict == "memory"


def test_huge_file_write_is_refused_and_removed():
    r = run("""
        import os
        print(os.getcwd(), flush=True)
        with open("big.bin", "wb") as f:
            for _ in range(8):
                f.write(b"x" * (1 << 20))
    """)
    assert r.verdict == "failed" and "File too large" in r.stderr
    assert not Path(r.stdout.strip()).exists()


@pytest.mark.parametrize(("target", "mechanisms"), [
    ("/tmp/t2ray_escape_{tag}", ("mountns",)),  # /tmp is world-writable: only the ro view helps
    ("/root/t2ray_escape_{tag}", ("setuid",)),
    (str(Path(__file__).resolve().parent / "t2ray_escape_{tag}"), ("setuid",)),
])
def test_writes_outside_the_workdir_fail(target, mechanisms):
    if missing := [m for m in mechanisms if not CAPS[m]]:
        pytest.skip(f"sandbox lacks {missing} here")
    path = Path(target.format(tag=secrets.token_hex(6)))
    try:
        r = run(f"open({str(path)!r}, 'w').write('escaped')\n")
        assert r.verdict == "failed" and ("Permission" in r.stderr or "Read-only" in r.stderr)
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_network_is_refused_and_listener_sees_nothing():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        plain = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
        assert plain.verdict == "failed" and "network access is disabled" in plain.stderr
        if CAPS["netns"]:  # raw libc calls bypass the audit hook; the namespace still holds
            raw = run(f"""
                import ctypes, struct
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
                addr = (struct.pack("<H", 2) + struct.pack("!H", {port})
                        + bytes([127, 0, 0, 1] + [0] * 8))
                assert fd >= 0 and libc.connect(fd, addr, 16) == 0, ctypes.get_errno()
            """)
            assert raw.verdict == "failed", raw
        with pytest.raises(BlockingIOError):
            listener.accept()


KILL_ALL = """import os, signal, time
for _ in range(10):
    os.kill(-1, signal.SIGKILL)
    time.sleep(0.1)
"""


@needs("setuid")
def test_signals_to_the_host_fail():
    parent = run("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\n")
    assert parent.verdict == "failed" and "PermissionError" in parent.stderr
    direct = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert direct.verdict == "failed" and "PermissionError" in direct.stderr
    group = run(f"import os, signal\nos.killpg({os.getpgrp()}, signal.SIGKILL)\n")
    assert group.verdict == "failed"
    # kill(-1) reaches every process of the caller's uid: each run has its own uid, so a
    # concurrent run survives it.
    with SandboxPool(workers=2, limits=FAST) as pool:
        victim, killer = pool.map(["import time\ntime.sleep(1.5)\nprint('survived')\n", KILL_ALL])
    assert victim.passed and victim.stdout == "survived\n", victim
    assert killer.passed
    assert os.getppid() > 1  # still here, still attached


def pids_running(argv0: bytes, token: bytes) -> list[int]:
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path("/proc", name, "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(argv0) and token in cmdline:
            found.append(int(name))
    return found


@needs("setuid")
def test_a_run_does_not_outlive_a_dead_host():
    """The host is SIGKILLed mid-run: the bootstrap's reaper kills the tree at wall_s + 5 s."""
    token = f"{1000 + secrets.randbelow(9000)}.{secrets.randbelow(10**6)}"
    program = f"import subprocess, time\nsubprocess.Popen(['sleep', '{token}'])\ntime.sleep(600)\n"
    host_code = f"from t2ray.sandbox import *\nrun_python({program!r}, SandboxLimits(wall_s=3))"
    host = subprocess.Popen([sys.executable, "-c", host_code],
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 10
    while not (pids := pids_running(b"sleep", token.encode())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids, "the sandboxed program never started"
    workdir = os.readlink(f"/proc/{pids[0]}/cwd")
    cgroups = Path(f"/proc/{pids[0]}/cgroup").read_text()
    host.kill()
    host.wait()
    try:
        deadline = time.monotonic() + 15  # wall_s + 5 s, plus slack for a loaded machine
        while pids_running(b"sleep", token.encode()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids_running(b"sleep", token.encode()) == []
    finally:  # what the dead host could not clean up: its empty workdir and cgroup
        for pid in pids_running(b"sleep", token.encode()):
            os.kill(pid, signal.SIGKILL)
        for line in cgroups.splitlines():
            if "t2ray-sandbox/run-" in line:
                hierarchy = line.split(":")[1].split(",")[0]
                for base in (Path("/sys/fs/cgroup", hierarchy), Path("/sys/fs/cgroup")):
                    with contextlib.suppress(OSError):
                        (base / line.split(":", 2)[2].lstrip("/")).rmdir()
        with contextlib.suppress(OSError):
            Path(workdir).rmdir()


def test_stdout_flood_is_cut_quickly():
    r = run("while True:\n    print('x' * 1000)\n")
    assert r.verdict == "output_limit" and r.wall_s < 3
    assert len(r.stdout) + len(r.stderr) <= FAST.max_output_bytes


def test_segfault_is_crashed():
    r = run("import ctypes\nctypes.string_at(0)\n")
    assert (r.verdict, r.returncode) == ("crashed", -signal.SIGSEGV)


UNITTEST = """import sys, unittest

class T(unittest.TestCase):
    def test(self):
        self.assertEqual(1, {expected})

"""
CHECK = """import sys

def candidate():
    sys.exit(0)  # exits from inside check(): not the program's end

def check(f):
    assert f() == 42

check(candidate)
"""


@pytest.mark.parametrize(("source", "verdict", "returncode"), [
    ("print('ok')\nimport sys\nsys.exit(0)\n", "passed", 0),  # the program's real end
    ("import sys\nif __name__ == '__main__':\n    sys.exit(len([]))\n", "passed", 0),
    ("import sys\nsys.exit(0)\nassert False\n", "failed", 0),  # skips what follows
    (CHECK, "failed", 0),
    ("import os\nos._exit(0)\n", "failed", 0),  # never reaches its end
    ("import os\nos._exit(3)\n", "failed", 3),
    ("import sys\nsys.exit('bad')\n", "failed", 1),
    ("import atexit, os\natexit.register(os._exit, 0)\nassert False\n", "failed", 0),
    (UNITTEST.format(expected=1) + "unittest.main()\n", "failed", 0),  # exits inside unittest
    (UNITTEST.format(expected=1)
     + "sys.exit(not unittest.main(exit=False).result.wasSuccessful())\n", "passed", 0),
    (UNITTEST.format(expected=2)
     + "sys.exit(not unittest.main(exit=False).result.wasSuccessful())\n", "failed", 1),
])
def test_exit_games(source, verdict, returncode):
    r = run(source)
    assert (r.verdict, r.returncode) == (verdict, returncode), r
    if verdict == "failed" and returncode == 0:
        assert "does not count as passing" in r.stderr


def test_fresh_private_workdir_minimal_env_and_cleanup(monkeypatch):
    monkeypatch.setenv("T2RAY_TEST_SECRET", "hunter2")
    src = """
        import os
        cwd = os.getcwd()
        assert os.environ["HOME"] == os.environ["TMPDIR"] == cwd
        assert "T2RAY_TEST_SECRET" not in os.environ and os.listdir(".") == ["program.py"]
        open("scratch.txt", "w").write("mine")
        print(cwd)
    """
    first, second = run(src), run(src)
    assert first.passed and second.passed, (first, second)
    assert first.stdout != second.stdout
    assert not Path(first.stdout.strip()).exists() and not Path(second.stdout.strip()).exists()


def test_pool_preserves_order_and_runs_in_parallel():
    sources = [f"import time\ntime.sleep(1)\nprint({i})\n" for i in range(4)]
    sources.append("assert False\n")
    start = time.monotonic()
    with SandboxPool(workers=5, limits=FAST) as pool:
        results = pool.map(sources)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results[:4]] == ["0\n", "1\n", "2\n", "3\n"]
    assert [r.verdict for r in results] == ["passed"] * 4 + ["failed"]
    assert elapsed < 3.5  # one after the other it would take over 4 s
