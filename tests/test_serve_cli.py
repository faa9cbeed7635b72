"""`serve run serve_config.yaml`, the command README gives, starts the graph and answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from t2ray.serve.local import free_port

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow  # the default suite's time; CI runs it
def test_serve_run_serve_config_answers(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the only change: a free port
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = Path(sys.executable).parent / "serve"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="t2ray-serve-run-", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "serve_run.log", "w")
    proc = subprocess.Popen([str(serve), "run", str(path)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve_run.log").read_text()[-3000:]
            try:
                health = _get(url + "/healthz")
                break
            except OSError:
                assert time.time() < deadline, (tmp_path / "serve_run.log").read_text()[-3000:]
                time.sleep(2)
        assert health["status"] == "ok" and health["model"] == "tiny"
        body = _get(url + "/v1/completions", {"model": "tiny", "prompt": "What is 2 + 2?",
                                              "max_tokens": 8, "temperature": 0})
        assert body["object"] == "text_completion" and body["choices"][0]["text"]
        assert body["t2ray"]["strategy"] == "prompt"  # the config's default adaptation
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # `serve run` shuts down the Ray it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
