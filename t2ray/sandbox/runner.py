"""Run untrusted (model-generated) Python programs in a contained child process.

Each program runs in a fresh ``python -I`` child of ``sys.executable``, in a new session,
bootstrapped by this very file (``_child_main``). While root, the bootstrap unshares a network
and a mount namespace (read-only view of the filesystem, private tmpfs working directory), then
forks the program's process, which joins a per-run cgroup (pids.max), sets rlimits and
``no_new_privs``, drops to a dedicated unprivileged uid and installs an audit hook refusing
sockets before it compiles the program. The bootstrap stays behind as the child subreaper of
the program's tree. The parent enforces the wall clock and the output cap, and afterwards kills
everything in the run's cgroup, uid and process group.

Which mechanisms hold depends on the machine; ``sandbox_capabilities()`` reports what a probe
run found here. docs/sandbox.md explains what each guarantee rests on.

This module imports only the standard library: it is also the child's bootstrap script.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import fcntl
import functools
import json
import math
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

VERDICTS = ("passed", "failed", "timeout", "memory", "output_limit", "crashed", "error")

# Linux constants (not exposed by the os module in Python 3.11).
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MOUNT_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC,
                       "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
                       "strictatime": 1 << 24}
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36
_AF_UNIX = 1

_UID_BASE = 2_000_000_000  # dedicated uids/gids (far above any real account), one per concurrent run
_UID_SLOTS = 1024
_UID_LOCK_DIR = Path("/run/t2ray-sandbox")
_NOFILE = 256
_PROGRAM = "program.py"  # in the working directory
_SETUP_FAILED = 125  # exit status of a child whose setup failed before the program started
_DRAIN_S = 1.0  # after the kill, how long to keep reading output still in the pipes
# BLAS/OpenMP pools would otherwise start one thread per core against max_procs and RLIMIT_AS.
_ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_EXIT_RECORD = re.compile(rb"S(\d+) (\d+\.\d+)\n")
_MEMORY_ERROR = re.compile(r"^(?:[\w.]+\.)?\w*MemoryError\b")
_EARLY_EXIT_NOTE = ("\n[t2ray-sandbox] exit status 0 before the program finished "
                    "(sys.exit/os._exit/atexit) does not count as passing\n")


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 5.0  # RLIMIT_CPU (SIGXCPU at cpu_s, SIGKILL one second later)
    wall_s: float = 10.0  # wall-clock timeout; the whole tree is killed
    memory_mb: int = 1024  # RLIMIT_AS
    max_procs: int = 32  # tasks (processes and threads): RLIMIT_NPROC under the run's uid + pids.max
    max_output_bytes: int = 1 << 20  # stdout+stderr; beyond -> "output_limit", tree killed
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE; the private tmpfs working dir holds 4x this


@dataclass(frozen=True)
class SandboxResult:
    verdict: str  # one of VERDICTS
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


@dataclass(frozen=True)
class _Plan:
    """The containment mechanisms a run uses (chosen once per process by a probe run)."""

    mountns: bool  # read-only filesystem view + private tmpfs working dir (root only)
    netns: bool  # empty network namespace (root, or non-root through a user namespace)
    setuid: bool  # run as a dedicated unprivileged uid, so RLIMIT_NPROC binds
    cgroup: tuple[str, bool] | None  # (base directory with a pids controller, is cgroup v2)


# --------------------------------------------------------------------------- public API
def run_python(source: str, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run ``source`` as ``__main__`` in a fresh sandbox. Never raises for what the program does.

    "passed" needs exit status 0 *and* the program reaching its end, or its last top-level
    statement itself calling ``sys.exit(0)``: an earlier ``sys.exit(0)``, one inside a called
    function (a candidate exiting from within ``check()``), ``os._exit(0)`` or an atexit
    handler forcing status 0 after a failure are all "failed". So is ``unittest.main()``
    (it exits from inside unittest); end such programs with
    ``sys.exit(not unittest.main(exit=False).result.wasSuccessful())``.
    """
    return _run(source, limits or SandboxLimits(), stdin, _plan())


def sandbox_capabilities() -> dict[str, bool]:
    """Which containment mechanisms hold on this machine (detected by a probe run, cached)."""
    plan = _plan()
    root = os.geteuid() == 0
    return {
        "process_group": True,  # new session; the whole group is killed after every run
        "rlimits": True,  # CPU, AS, FSIZE, NOFILE, CORE=0
        "no_new_privs": True,  # setuid binaries do not elevate
        "subreaper": True,  # the bootstrap reaps the program's orphans; no zombie outlives a run
        "audit_hook": True,  # socket creation/connect/bind refused in-process (bypassable)
        "setuid": plan.setuid,
        "rlimit_nproc": plan.setuid or not root,  # root is exempt from RLIMIT_NPROC
        "cgroup_pids": plan.cgroup is not None,
        "netns": plan.netns,
        "mountns": plan.mountns,
    }


class SandboxPool:
    """Runs many programs in parallel: worker threads, each driving one sandboxed subprocess."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1,
                                            thread_name_prefix="t2ray-sandbox")

    def map(self, sources: Sequence[str]) -> list[SandboxResult]:
        """Results in the order of ``sources``."""
        return list(self._executor.map(lambda s: run_python(s, self.limits), sources))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- detection
_plan_lock = threading.Lock()
_cached_plan: _Plan | None = None
_PROBE = "import decimal, json, os\nopen('probe', 'w').write(json.dumps(os.getuid()))\n"


def _plan() -> _Plan:
    """The strongest plan whose probe run passes: containment degrades instead of failing."""
    global _cached_plan
    with _plan_lock:
        if _cached_plan is None:
            root = os.geteuid() == 0
            cgroup = _cgroup_base() if root else None
            setuid = root and _uid_range_mapped()
            public = all(_hidden_ancestor(d) is None for d in _interpreter_dirs())
            ladder = [_Plan(root, True, setuid, cgroup),
                      _Plan(False, True, setuid and public, cgroup),
                      _Plan(False, False, setuid and public, cgroup),
                      _Plan(False, False, False, None)]
            limits = SandboxLimits(wall_s=30.0)
            _cached_plan = next((p for p in ladder if _run(_PROBE, limits, "", p).passed),
                                ladder[-1])
        return _cached_plan


def _interpreter_dirs() -> list[str]:
    """Directories the interpreter (and a ``sys.executable`` it spawns) reads after startup."""
    paths = sysconfig.get_paths()
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            paths["purelib"], paths["platlib"], os.path.dirname(os.path.realpath(sys.executable))}
    real = {os.path.realpath(d) for d in dirs if os.path.isdir(d)}
    return sorted(d for d in real if not any(d.startswith(p + "/") for p in real))


def _hidden_ancestor(path: str) -> str | None:
    """Top-most strict ancestor of ``path`` that other users cannot traverse (e.g. /root)."""
    for ancestor in reversed(Path(path).parents):
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return str(ancestor)
    return None


def _uid_range_mapped() -> bool:
    """Whether the dedicated uid/gid range exists in this (possibly nested) user namespace."""
    def covered(map_file: str) -> bool:
        for line in Path(map_file).read_text().splitlines():
            inside, _, count = map(int, line.split())
            if inside <= _UID_BASE and _UID_BASE + _UID_SLOTS <= inside + count:
                return True
        return False

    return covered("/proc/self/uid_map") and covered("/proc/self/gid_map")


def _cgroup_base() -> tuple[str, bool] | None:
    """A directory under which per-run cgroups get ``pids.max``: cgroup v2, else the v1 pids
    hierarchy (hybrid hosts). None where no pids controller is writable."""
    for fields in _mountinfo():
        mount_point, fstype, super_options = fields[4], fields[-3], fields[-1]
        root = Path(os.fsdecode(mount_point))
        try:
            if fstype == b"cgroup2" and "pids" in (root / "cgroup.controllers").read_text().split():
                base = root / "t2ray-sandbox"
                (root / "cgroup.subtree_control").write_text("+pids")
                base.mkdir(exist_ok=True)
                (base / "cgroup.subtree_control").write_text("+pids")
                return str(base), True
            if fstype == b"cgroup" and b"pids" in super_options.split(b","):
                base = root / "t2ray-sandbox"
                base.mkdir(exist_ok=True)
                return str(base), False
        except OSError:
            continue
    return None


def _mountinfo() -> list[list[bytes]]:
    """/proc/self/mountinfo rows, fields split and octal escapes (\\040 ...) decoded."""
    rows = Path("/proc/self/mountinfo").read_bytes().splitlines()
    unescape = re.compile(rb"\\([0-7]{3})")
    return [[unescape.sub(lambda m: bytes([int(m[1], 8)]), f) for f in row.split()] for row in rows]


# --------------------------------------------------------------------------- parent side
class _Cgroup:
    """A per-run cgroup capping the number of tasks (pids.max); it lists every task of the run."""

    def __init__(self, base: str, is_v2: bool, max_procs: int) -> None:
        self.path = Path(base) / f"run-{os.getpid()}-{secrets.token_hex(6)}"
        self.is_v2 = is_v2
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_procs))

    def survivors(self) -> set[int]:
        """Tasks still in the cgroup (on v2, after killing them all at once via cgroup.kill)."""
        if self.is_v2:
            with suppress(OSError):
                (self.path / "cgroup.kill").write_text("1")
        with suppress(OSError):
            return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        return set()

    def remove(self) -> None:
        for _ in range(200):  # exiting tasks leave the cgroup asynchronously
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.005)


def _pids_of_uid(uid: int) -> set[int]:
    """Live (non-zombie) processes whose real, effective or saved uid is ``uid``."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path("/proc", name, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if str(uid) in fields["Uid"].split()[:3] and not fields["State"].strip().startswith("Z"):
            found.add(int(name))
    return found


@contextmanager
def _uid_slot() -> Iterator[int]:
    """A dedicated uid no other run (in any process) uses meanwhile: flock on a root-only file."""
    _UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(_UID_LOCK_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise PermissionError(f"{_UID_LOCK_DIR} must be a root-only directory")
    for slot in range(_UID_SLOTS):
        fd = os.open(_UID_LOCK_DIR / f"{slot}.lock",
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            uid = _UID_BASE + slot
            _kill_pids(functools.partial(_pids_of_uid, uid))  # leftovers of a host that died mid-run
            yield uid
        finally:
            os.close(fd)
        return
    raise RuntimeError("all sandbox uids are in use")


def _kill_pids(list_pids: Callable[[], set[int]], timeout_s: float = 5.0) -> None:
    """SIGKILL what ``list_pids()`` returns until it returns nothing (forks race the kill)."""
    deadline = time.monotonic() + timeout_s
    while (pids := list_pids()) and time.monotonic() < deadline:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)


class _Child:
    """The sandboxed tree. Its first process (the *reaper*, root, outside the cgroup) forks the
    program and reaps every orphan of it (it is a child subreaper), so no zombie outlives the
    run even where PID 1 reaps slowly; it reports the program's exit on the status pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], cgroup: _Cgroup | None,
                 uid: int | None) -> None:
        self.proc, self.cgroup, self.uid = proc, cgroup, uid
        self.done = False

    def exited(self, timeout_s: float = 0.0) -> bool:
        """Whether the reaper exited; it is left unreaped, so its group id cannot be reused."""
        deadline = time.monotonic() + timeout_s
        while True:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            if os.waitid(os.P_PID, self.proc.pid, flags) is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def kill(self) -> None:
        """Kill the program's whole tree, let the reaper collect it, then kill and reap the
        process group (the reaper included). Idempotent."""
        if self.done:
            return
        self.done = True

        def program_tree() -> set[int]:  # also what escaped the process group (setsid)
            pids = self.cgroup.survivors() if self.cgroup else set()
            return pids | (_pids_of_uid(self.uid) if self.uid is not None else set())

        if self.cgroup or self.uid is not None:
            _kill_pids(program_tree)
            self.exited(timeout_s=2.0)  # the reaper exits once it has collected everything
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class _Pipes:
    """The child's stdout/stderr (read as they fill, capped in total while reading) and its
    status pipe (bootstrap messages, last 4 KiB kept); optionally also a pidfd to wake on."""

    def __init__(self, cap: int) -> None:
        self.cap, self.overflow = cap, False
        self.sel = selectors.DefaultSelector()
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.status_r, self.status_w = os.pipe()
        self.bufs = {self.out_r: bytearray(), self.err_r: bytearray()}
        self.status = b""
        for fd in (self.out_r, self.err_r, self.status_r):
            self.sel.register(fd, selectors.EVENT_READ)

    def close_write_ends(self) -> None:
        """Once the child has them: EOF then means every writer is gone."""
        for fd in (self.out_w, self.err_w, self.status_w):
            os.close(fd)
        self.out_w = self.err_w = self.status_w = -1

    def pump(self, timeout: float) -> None:
        """Read whatever is ready, waiting at most ``timeout`` seconds."""
        for key, _ in self.sel.select(timeout):
            if key.fd not in (self.out_r, self.err_r, self.status_r):  # the pidfd
                continue
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                self.sel.unregister(key.fd)
            elif key.fd == self.status_r:
                self.status = (self.status + chunk)[-4096:]
            else:
                room = self.cap - sum(map(len, self.bufs.values()))
                self.bufs[key.fd] += chunk[:room]
                self.overflow |= len(chunk) > room

    def reading(self) -> bool:
        return any(fd in self.sel.get_map() for fd in (self.out_r, self.err_r, self.status_r))

    def text(self, fd: int) -> str:
        return self.bufs[fd].decode("utf-8", "replace")

    def close(self) -> None:
        self.sel.close()
        for fd in (self.out_r, self.out_w, self.err_r, self.err_w, self.status_r, self.status_w):
            if fd >= 0:
                os.close(fd)


def _error(message: str, start: float) -> SandboxResult:
    return SandboxResult("error", None, "", f"[t2ray-sandbox] {message}\n", time.monotonic() - start)


def _run(source: str, limits: SandboxLimits, stdin: str, plan: _Plan) -> SandboxResult:
    start = time.monotonic()
    nonce = secrets.token_hex(16).encode()  # lowercase hex: never contains R, X, D or S
    with ExitStack() as stack:
        try:
            uid = stack.enter_context(_uid_slot()) if plan.setuid else None
            workdir = tempfile.mkdtemp(prefix="t2ray-sbx-")
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            if uid is not None:
                os.chown(workdir, uid, uid)
            cgroup = _Cgroup(*plan.cgroup, limits.max_procs) if plan.cgroup else None
            if cgroup:
                stack.callback(cgroup.remove)
            setup = stack.enter_context(tempfile.TemporaryFile())  # nonce + source, no path
            setup.write(nonce + source.encode("utf-8", "replace"))
            setup.seek(0)
            stdin_file = stack.enter_context(tempfile.TemporaryFile())
            stdin_file.write(stdin.encode("utf-8", "replace"))
            stdin_file.seek(0)
            pipes = _Pipes(limits.max_output_bytes)
            stack.callback(pipes.close)
            config = _child_config(limits, plan, workdir, uid, cgroup, setup.fileno(),
                                   pipes.status_w)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **_ONE_THREAD}
            proc = subprocess.Popen(
                [sys.executable, "-I", os.path.abspath(__file__), json.dumps(config)],
                stdin=stdin_file, stdout=pipes.out_w, stderr=pipes.err_w, cwd="/", env=env,
                pass_fds=(setup.fileno(), pipes.status_w), start_new_session=True)
        except (OSError, RuntimeError) as exc:
            return _error(f"could not start: {exc}", start)
        pipes.close_write_ends()
        child = _Child(proc, cgroup, uid)
        stack.callback(child.kill)  # also when the host is interrupted mid-run
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # pidfd needs Linux >= 5.3: poll instead
            pidfd = None
        if pidfd is not None:
            stack.callback(os.close, pidfd)
            pipes.sel.register(pidfd, selectors.EVENT_READ)

        deadline = start + limits.wall_s
        timed_out = False
        while not pipes.overflow and b"X" not in pipes.status and not child.exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            pipes.pump(remaining if pidfd is not None else min(remaining, 0.02))
        wall_s = time.monotonic() - start
        child.kill()
        if pidfd is not None:
            pipes.sel.unregister(pidfd)
        drain_until = time.monotonic() + _DRAIN_S  # escaped writers (no cgroup/uid) may linger
        while pipes.reading() and not pipes.overflow and time.monotonic() < drain_until:
            pipes.pump(drain_until - time.monotonic())

        # The reaper's last word: the program's wait status and CPU time (else its own status).
        rc, cpu_s = proc.returncode, 0.0
        if reports := _EXIT_RECORD.findall(pipes.status):
            rc, cpu_s = os.waitstatus_to_exitcode(int(reports[-1][0])), float(reports[-1][1])
        stdout, stderr = pipes.text(pipes.out_r), pipes.text(pipes.err_r)
        verdict = _verdict(limits, rc, cpu_s, stderr, ready=b"R" in pipes.status,
                           finished=b"D" + nonce in pipes.status, timed_out=timed_out,
                           overflow=pipes.overflow)
        if verdict == "failed" and rc == 0:
            stderr += _EARLY_EXIT_NOTE
        return SandboxResult(verdict, rc, stdout, stderr, wall_s)


def _verdict(limits: SandboxLimits, rc: int, cpu_s: float, stderr: str, *, ready: bool,
             finished: bool, timed_out: bool, overflow: bool) -> str:
    if overflow:
        return "output_limit"
    if not ready:  # the child died or hung before the program started
        return "error"
    if timed_out or rc == -signal.SIGXCPU:
        return "timeout"
    if rc < 0:  # SIGKILL we did not send: the hard RLIMIT_CPU, if the CPU time is there
        return "timeout" if rc == -signal.SIGKILL and cpu_s >= limits.cpu_s else "crashed"
    if rc == 0:
        return "passed" if finished else "failed"
    last_line = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return "memory" if _MEMORY_ERROR.match(last_line) else "failed"


def _child_config(limits: SandboxLimits, plan: _Plan, workdir: str, uid: int | None,
                  cgroup: _Cgroup | None, setup_fd: int, status_fd: int) -> dict[str, Any]:
    root = os.geteuid() == 0
    nproc = limits.max_procs if uid is not None else None
    if not root:  # RLIMIT_NPROC counts all of this user's tasks: allow max_procs more
        nproc = _count_tasks(os.getuid()) + limits.max_procs
    unshare = 0
    if plan.netns:
        unshare |= _CLONE_NEWNET if root else _CLONE_NEWNET | _CLONE_NEWUSER
    if plan.mountns:
        unshare |= _CLONE_NEWNS
    return {
        "setup_fd": setup_fd, "status_fd": status_fd, "workdir": workdir,
        "uid": uid, "cgroup_procs": str(cgroup.path / "cgroup.procs") if cgroup else None,
        "unshare": unshare, "mountns": plan.mountns, "host_mntns": os.readlink("/proc/self/ns/mnt"),
        "expose": _interpreter_dirs(), "tmpfs_bytes": 4 * limits.max_file_bytes,
        "cpu_s": limits.cpu_s, "wall_s": limits.wall_s, "memory_bytes": limits.memory_mb << 20,
        "file_bytes": limits.max_file_bytes, "nproc": nproc,
    }


def _count_tasks(uid: int) -> int:
    """Tasks (threads) of ``uid``, as RLIMIT_NPROC counts them."""
    return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in _pids_of_uid(uid)
               if os.path.isdir(f"/proc/{pid}/task"))


# --------------------------------------------------------------------------- child side
def _child_main() -> None:
    """Bootstrap of the sandbox (started as root where possible): isolate, fork the program,
    then stay behind as the reaper of the program's whole tree."""
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    try:
        with os.fdopen(config["setup_fd"], "rb") as setup:
            nonce, source = setup.read(32), setup.read()
        os.set_inheritable(status_fd, False)  # forked children keep it; exec'd ones do not
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        cgroup_fd = _isolate(libc, config, source)
        _check(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        program = os.fork()
        if program == 0:
            _confine(libc, config, cgroup_fd)
            sys.addaudithook(_deny_network)
    except BaseException as exc:  # noqa: BLE001 - any setup failure must stop the run
        sys.stderr.write(f"[t2ray-sandbox] setup failed: {exc!r}\n")
        sys.stderr.flush()
        os._exit(_SETUP_FAILED)
    if program:
        _reap(program, status_fd, config["uid"], config["wall_s"])
    os.write(status_fd, b"R")
    if _run_program(source.decode("utf-8"), os.path.abspath(_PROGRAM)):
        os.write(status_fd, b"D" + nonce)


def _reap(program: int, status_fd: int, uid: int | None, wall_s: float) -> None:
    """Reap every process of the run as it dies (orphans come here: child subreaper). Say "X"
    when the program exits; once nothing is left, report its wait status and CPU time.

    The host kills the tree at ``wall_s``; should the host die first, the reaper does it
    5 s later (and every second after), so no run outlives its host for long."""
    for fd in (0, 1, 2):  # EOF on the output pipes must not wait for the reaper
        os.close(fd)

    def overdue(*_: object) -> None:
        signal.alarm(1)
        if uid is None:
            os.killpg(0, signal.SIGKILL)  # this process too: its orphans go to init
        elif os.fork() == 0:  # kill(-1) as the run's uid: every process of the run, nothing else
            with suppress(BaseException):
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            os._exit(0)

    def tell(message: bytes) -> None:
        with suppress(OSError):  # the host may be gone (EPIPE)
            os.write(status_fd, message)

    signal.signal(signal.SIGALRM, overdue)
    signal.alarm(math.ceil(wall_s) + 5)
    report = b""
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == program:
            report = f"S{status} {usage.ru_utime + usage.ru_stime:.3f}\n".encode()
            tell(b"X")
    tell(report)
    os._exit(0)


def _run_program(source: str, filename: str) -> bool:
    """Execute ``source`` as ``__main__``; True if it ran to its end, or if its last top-level
    statement itself raised SystemExit(0/None) (``sys.exit(0)``, ``sys.exit(main())``) - not
    a function it called: ``check(candidate)`` must not pass because the candidate exits.
    An uncaught exception is reported like the interpreter does, without the bootstrap's
    frames, with exit status 1."""
    try:
        tree = ast.parse(source, filename)
        code = compile(tree, filename, "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        raise SystemExit(1) from None
    module = types.ModuleType("__main__")
    module.__file__ = filename
    sys.modules["__main__"] = module
    sys.argv = [filename]
    try:
        exec(code, module.__dict__)  # noqa: S102 - this process is the sandbox
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:
            tb = tb.tb_next
        if isinstance(exc, SystemExit):
            last = tree.body[-1]
            end = last.end_lineno or last.lineno
            direct = tb is not None and tb.tb_next is None and last.lineno <= tb.tb_lineno <= end
            if direct and exc.code in (None, 0):
                return True
            raise
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        raise SystemExit(1) from None
    return True


def _isolate(libc: ctypes.CDLL, config: dict[str, Any], source: bytes) -> int | None:
    """In the bootstrap, for the whole run: namespaces, private filesystem, working directory.
    Returns an fd of the run's cgroup.procs, opened before /sys becomes read-only."""
    cgroup_fd = os.open(config["cgroup_procs"], os.O_WRONLY) if config["cgroup_procs"] else None
    if config["unshare"]:
        _check(libc.unshare(config["unshare"]), "unshare")
    workdir, uid = config["workdir"], config["uid"]
    if config["mountns"]:
        if os.readlink("/proc/self/ns/mnt") == config["host_mntns"]:
            raise RuntimeError("still in the host mount namespace")
        _private_filesystem(libc, workdir, config["expose"], uid or 0, config["tmpfs_bytes"])
    os.chdir(workdir)
    Path(_PROGRAM).write_bytes(source)  # tracebacks show its lines; __file__ exists
    if uid is not None:
        os.chown(_PROGRAM, uid, uid)
    return cgroup_fd


def _confine(libc: ctypes.CDLL, config: dict[str, Any], cgroup_fd: int | None) -> None:
    """In the program's process, before its code: cgroup, rlimits, no_new_privs, uid."""
    if cgroup_fd is not None:
        os.write(cgroup_fd, str(os.getpid()).encode())
        os.close(cgroup_fd)
    cpu = math.ceil(config["cpu_s"])
    _setrlimit(resource.RLIMIT_CORE, 0)
    _setrlimit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _setrlimit(resource.RLIMIT_FSIZE, config["file_bytes"])
    _setrlimit(resource.RLIMIT_NOFILE, _NOFILE)
    if config["nproc"] is not None:
        _setrlimit(resource.RLIMIT_NPROC, config["nproc"])
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if (uid := config["uid"]) is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
            raise RuntimeError("could not drop privileges")
    _setrlimit(resource.RLIMIT_AS, config["memory_bytes"])  # last: the steps above allocate


def _private_filesystem(libc: ctypes.CDLL, workdir: str, expose: list[str], uid: int,
                        tmpfs_bytes: int) -> None:
    """In the new mount namespace: keep the interpreter reachable for ``uid``, put a private
    tmpfs on ``workdir`` and remount every other mount read-only and nosuid."""
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]

    def mount(src: str | None, dst: str, fstype: str | None, flags: int,
              data: str | None = None) -> int:
        return libc.mount(src and os.fsencode(src), os.fsencode(dst),
                          fstype and fstype.encode(), flags, data and data.encode())

    _check(mount(None, "/", None, _MS_REC | _MS_PRIVATE), "mount --make-rprivate /")
    # Directories such as /root (0700) hide the interpreter from other uids: cover them with an
    # empty tmpfs and bind back only what the interpreter needs.
    hidden: dict[str, list[str]] = {}
    for path in [*expose, workdir]:
        if (ancestor := _hidden_ancestor(path)) is not None:
            hidden.setdefault(ancestor, []).append(path)
    for ancestor, paths in hidden.items():
        fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in paths}
        _check(mount("tmpfs", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m"),
               f"mount tmpfs on {ancestor}")
        for path, fd in fds.items():
            os.makedirs(path, mode=0o755, exist_ok=True)
            _check(mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC), f"bind {path}")
            os.close(fd)
    _check(mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
                 f"mode=0700,uid={uid},gid={uid},size={tmpfs_bytes}"), "mount tmpfs workdir")
    for fields in _mountinfo():
        target = os.fsdecode(fields[4])
        if target == workdir:
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID  # MS_BIND: this mount only
        for option in fields[5].decode().split(","):
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        if mount(None, target, None, flags) != 0:
            err = ctypes.get_errno()
            # A mount shadowed by one of our tmpfs covers is unreachable: nothing to protect.
            shadowed = any(target.startswith(a + "/") for a in hidden)
            if not (shadowed and err in (errno.EINVAL, errno.ENOENT)):
                _check(-1, f"remount {target} read-only", err)


def _check(ret: int, what: str, err: int | None = None) -> None:
    if ret != 0:
        err = err if err is not None else ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setrlimit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit (hard limit = soft unless given), never above the inherited hard limit."""
    _, cur_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(which, (soft, hard))


def _deny_network(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: no sockets other than AF_UNIX, no connect/bind/DNS. Defence in depth only
    (ctypes can call libc directly); the network namespace is the real barrier."""
    if not event.startswith("socket.") or event == "socket.gethostname":
        return
    if not (event == "socket.__new__" and args[1] == _AF_UNIX):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")


if __name__ == "__main__":
    _child_main()
