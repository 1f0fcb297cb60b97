"""SFT for real (slow): the embedded model learns a format it never uses (every answer starts with
"ANSWER:", tests/assets/sft) and its held-out loss falls; two processes under `accelerate launch`
(DDP, gloo on CPU) reach the weights one process reaches with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train_distributed import ROOT, WORKER, _finish, _free_port, _launch_config, _max_diff, _train_lines

SFT_ASSETS = Path(__file__).parent / "assets" / "sft"


def _greedy(model_dir: str, tokenizer_dir: str, rows: list[dict], max_new_tokens: int = 8) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for row in rows:
        enc = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


@pytest.mark.slow
def test_embedded_model_learns_a_new_answer_format_and_held_out_loss_falls(tmp_path, embedded_model_dir):
    from rlaif.train.config import SFTConfig
    from rlaif.train.sft import train_sft

    held_out = [json.loads(x) for x in (SFT_ASSETS / "test.jsonl").read_text().splitlines()][:6]
    before = _greedy(embedded_model_dir, embedded_model_dir, held_out)
    assert not any(a.startswith("ANSWER:") for a in before), before
    out = tmp_path / "sft"
    summary = train_sft(SFTConfig(data=str(SFT_ASSETS), model=embedded_model_dir, out=str(out), max_steps=4,
                                  lr=2e-4, warmup_ratio=0.0, lr_schedule="constant", max_length=96,
                                  max_tokens_per_batch=384, save_steps=0, logging_steps=1, progress=False))
    print("sft summary:", json.dumps({k: summary[k] for k in ("test_before", "test", "train_loss_first_steps",
                                                               "train_loss_last_steps")}))
    assert summary["test"]["loss"] < 0.5 * summary["test_before"]["loss"]
    after = _greedy(str(out), embedded_model_dir, held_out)
    print("before:", before, "\nafter:", after)
    assert sum(a.startswith("ANSWER:") for a in after) >= 5, after


def _sft_data(tmp_path: Path) -> Path:
    from tests.test_train_sft import chats, write_jsonl

    rows = chats(24)
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"messages": r} for r in rows[:20]])
    write_jsonl(tmp_path / "data" / "test.jsonl", [{"messages": r} for r in rows[20:]])
    return tmp_path / "data"


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one(tmp_path, tiny_model_dir):
    from rlaif.cli import main

    data = _sft_data(tmp_path)
    common = ["--data", str(data), "--model", tiny_model_dir, "max_steps=4", "lr=0.003", "warmup_ratio=0",
              "max_length=128", "max_tokens_per_batch=128", "progress=false", "logging_steps=1", "save_steps=0"]
    one = tmp_path / "one"
    assert main(["train", "sft", *common, "--out", str(one), "grad_accum=2"]) == 0
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    two = tmp_path / "two"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(_launch_config(tmp_path, "accelerate_ddp.yaml")), "--main_process_port", str(_free_port()),
           str(worker), "train", "sft", *common, "--out", str(two)]
    _finish(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"}))
    assert _max_diff(two, one) < 1e-5
    assert _max_diff(two, Path(tiny_model_dir), same_keys=False) > 1e-3, "training moved the weights"
    lines, want = _train_lines(two), _train_lines(one)
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    for got, exp in zip(lines, want):  # tokens summed over both processes = the one process's micro-batches
        assert got["train/tokens"] == exp["train/tokens"]
    assert json.loads((two / "summary.json").read_text())["test"]["loss"] == pytest.approx(
        json.loads((one / "summary.json").read_text())["test"]["loss"], abs=1e-5)
