"""A private multi-node Ray cluster made of `ray start` processes on this machine, for tests.

Every node gets its own ports (Ray's defaults collide between two nodes on one machine) and a
marker in its environment, so a test can kill exactly one node, and `stop()` kills only what this
cluster started (never `ray stop`). Each blocking phase has a deadline and fails, naming the
phase, when it overruns."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
MARKER = "T2RAY_TEST_NODE"
EXCLUDES = json.dumps({"excludes": [".venv", "runs", ".git", "*.egg-info", "docs/scores"]})
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_count = itertools.count()


class Phase:
    """A deadline for one named phase of a test."""

    def __init__(self, name: str, seconds: float, explain=None):
        self.name, self.seconds, self.end = name, seconds, time.time() + seconds
        self.explain = explain  # what to show when it overruns (cluster state, job logs)

    def check(self) -> None:
        if time.time() > self.end:
            detail = self.explain() if self.explain else ""
            raise TimeoutError(f"phase '{self.name}' overran {self.seconds:.0f} s\n{detail}")

    def left(self) -> float:
        return max(1.0, self.end - time.time())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(n: int) -> tuple[int, int]:
    for _ in range(200):
        start = random.randrange(20000, 60000 - n)
        if all(_bindable(p) for p in range(start, start + n, 7)):
            return start, start + n - 1
    raise RuntimeError("no free port range")


NODE_PORTS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port",
              "metrics-export-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port")
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port")


def _node_ports(flags: tuple[str, ...]) -> dict[str, int]:
    """One free port per flag outside a free worker-port range (`min/max-worker-port`)."""
    low, high = _free_range(120)
    ports: set[int] = set()
    while len(ports) < len(flags):
        port = _free_port()
        if not low <= port <= high:
            ports.add(port)
    return {**dict(zip(flags, sorted(ports))), "min-worker-port": low, "max-worker-port": high}


def _flags(ports: dict[str, int]) -> list[str]:
    return [f"--{flag}={port}" for flag, port in ports.items()]


class RayCluster:
    def __init__(self, cpus: int):
        self.cpus = cpus
        self.temp_dir = Path("/tmp") / f"t2ray-cluster-{os.getpid()}-{next(_count)}"
        self.env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
                    "TOKENIZERS_PARALLELISM": "false"}
        self.gcs_port = self.dashboard_port = None
        self.markers: list[str] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], marker: str) -> None:
        self.markers.append(marker)
        proc = subprocess.run([RAY, "start", *args, f"--num-cpus={self.cpus}",
                               "--disable-usage-stats"], env={**self.env, MARKER: marker},
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{proc.stderr[-3000:]}")

    def start_head(self) -> None:
        ports = _node_ports(NODE_PORTS + HEAD_PORTS)
        self.gcs_port, self.dashboard_port = ports["port"], ports["dashboard-port"]
        self._start(["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                     f"--temp-dir={self.temp_dir}", *_flags(ports)], f"{self.temp_dir}:head")

    def start_node(self, name: str) -> None:
        """A worker node with one custom resource named after it (to pin work there)."""
        self._start([f"--address=127.0.0.1:{self.gcs_port}", f"--resources={{\"{name}\": 1}}",
                     *_flags(_node_ports(NODE_PORTS))], f"{self.temp_dir}:{name}")

    def _pids(self, needle: str) -> list[tuple[int, str]]:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
                environ = (proc / "environ").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if needle in cmd or needle in environ:
                found.append((int(proc.name), cmd.replace("\0", " ")))
        return found

    def kill_node(self, name: str) -> list[tuple[int, str]]:
        """SIGKILL every process of one node (found by its marker); their pids and commands."""
        victims = [(p, c) for p, c in self._pids(f"{MARKER}={self.temp_dir}:{name}\0")]
        for pid, _ in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return victims

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        return sum(n.state == "ALIVE" for n in list_nodes(address=self.address))

    def _client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address)

    def job_status(self, job_id: str) -> str:
        return str(self._client().get_job_status(job_id).value)

    def job_logs(self, job_id: str) -> str:
        return self._client().get_job_logs(job_id)

    def check_job(self, job_id: str) -> None:
        status = self.job_status(job_id)
        if status in TERMINAL:
            raise AssertionError(f"job ended early ({status}):\n{self.job_logs(job_id)[-4000:]}")

    def explain(self, job_id: str) -> str:
        """`ray status` and the end of the job's log, for a phase that overran."""
        status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{self.gcs_port}"],
                                env=self.env, capture_output=True, text=True, timeout=60).stdout
        return f"{status}\n{self.job_logs(job_id)[-6000:]}"

    def wait_job(self, job_id: str, phase: Phase) -> str:
        while (status := self.job_status(job_id)) not in TERMINAL:
            phase.check()
            time.sleep(2)
        return status

    def stop(self) -> None:
        for pid, _ in self._pids(str(self.temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def submit(cluster: RayCluster, command: list[str], wait: bool = True, timeout: float = 600):
    """`ray job submit --working-dir <repo>`: the finished process (wait) or the job's id."""
    job_id = f"t2ray-test-{os.getpid()}-{next(_count)}"
    args = [RAY, "job", "submit", f"--address={cluster.address}", "--working-dir", str(ROOT),
            "--runtime-env-json", EXCLUDES, "--submission-id", job_id,
            *([] if wait else ["--no-wait"]), "--", *command]
    phase = Phase("job submission", 90)
    while True:  # the head's job agent needs a few seconds after `ray start`
        proc = subprocess.run(args, env=cluster.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if "No available agent" not in proc.stderr:
            break
        phase.check()
        time.sleep(2)
    if not wait:
        if proc.returncode != 0:
            raise RuntimeError(f"ray job submit failed:\n{proc.stderr[-3000:]}")
        return job_id
    return proc


def registered_checkpoints(storage: Path) -> list[str]:
    """Checkpoints Ray Train's controller has registered under a run's storage path: its
    snapshot file, rewritten at each registration, names them. A checkpoint's directory appears
    a moment earlier, and a worker killed in between makes the run restart from step 0."""
    snapshots = list(Path(storage).glob("*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return []
    text = snapshots[0].read_text()
    return [p.name for p in Path(storage).glob("*/checkpoint_*") if p.is_dir() and p.name in text]

