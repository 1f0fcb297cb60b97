"""DPO: margin grows, reference modes agree, logits_to_keep is exact, reload, LoRA (kill + resume:
test_train_resume.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlaif.train.config import DPOConfig
from rlaif.train.data import collate, load_splits, tokenize_rows

ASSETS = Path(__file__).parent / "assets" / "prefs"


def _cfg(tiny_model_dir, out, **kw):
    base = dict(data=str(ASSETS), model=tiny_model_dir, out=str(out), lr=2e-3, batch_size=4, max_steps=10,
                warmup_ratio=0.0, save_steps=0, logging_steps=2, progress=False)
    return DPOConfig(**{**base, **kw})


def _full_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log_softmax(logits)[t] at labels[t + 1] over labelled positions, and their count."""
    shifted = labels[:, 1:]
    mask = shifted != -100
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def test_response_logprobs_on_selected_positions_is_exact(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.train.dpo import response_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs, _ = tokenize_rows(tok, load_splits(ASSETS)["train"][:4], 1024, 512)
    batch = collate(pairs, tok.pad_token_id)
    with torch.no_grad():
        got, counts = response_logprobs(model, batch)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        want, want_counts = _full_logprobs(full, batch.labels)
    assert torch.allclose(got, want, atol=1e-4)
    assert counts.tolist() == want_counts.tolist()
    assert counts.tolist() == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]


@pytest.fixture(scope="module")
def trained_dpo(tmp_path_factory, tiny_model_dir):
    from rlaif.train.dpo import train_dpo

    out = tmp_path_factory.mktemp("dpo")
    return out, train_dpo(_cfg(tiny_model_dir, out, lr=5e-3))


def test_dpo_margin_grows(trained_dpo):
    out, summary = trained_dpo
    assert summary["train_margin_last_steps"] > summary["train_margin_first_steps"] + 0.05
    assert summary["test"]["rewards/margin"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    for k in ("train/loss", "train/rewards/accuracy", "train/rewards/margin", "train/logps/chosen",
              "train/logps/rejected", "eval/loss", "eval/rewards/accuracy"):
        assert k in keys
    assert (out / "ref_logps.pt").is_file()


def test_dpo_policy_reloads_with_plain_transformers(trained_dpo, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trained_dpo
    model = AutoModelForCausalLM.from_pretrained(out)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    assert changed, "training must change the weights"


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_each_loss_lowers_itself_and_raises_the_margin(tiny_model_dir, loss_type):
    """A few Adam steps on one fixed batch (reference = the starting model) must lower that loss
    type's own loss and raise the chosen-minus-rejected log-ratio margin it is built on (summed
    log-probs; per-token means for ipo). A sign error in any branch of dpo_loss fails here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.train.dpo import response_logprobs
    from rlaif.train.losses import dpo_loss

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs, _ = tokenize_rows(tok, load_splits(ASSETS)["train"][:4], 1024, 512)
    batch = collate(pairs, tok.pad_token_id)
    with torch.no_grad():
        ref, counts = response_logprobs(model, batch)  # (2B,): chosen rows, then rejected rows
    ref_c, ref_r = ref.chunk(2)
    n_c, n_r = counts.chunk(2)

    def loss_and_margin() -> tuple[torch.Tensor, float]:
        pc, pr = response_logprobs(model, batch)[0].chunk(2)
        loss = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1, loss_type=loss_type, label_smoothing=0.1,
                        chosen_tokens=n_c, rejected_tokens=n_r).mean()
        if loss_type == "ipo":
            margin = (pc - ref_c) / n_c - (pr - ref_r) / n_r
        else:
            margin = (pc - ref_c) - (pr - ref_r)
        return loss, margin.mean().item()

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first_loss, first_margin = loss_and_margin()
    assert first_margin == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
    for _ in range(4):
        loss, _ = loss_and_margin()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last_loss, last_margin = loss_and_margin()
    assert last_loss.item() < first_loss.item() - 1e-3, (first_loss.item(), last_loss.item())
    assert last_margin > first_margin + 1e-2, (first_margin, last_margin)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust"])
def test_other_losses_reach_the_trainer(tmp_path, tiny_model_dir, loss_type):
    """End to end, the configured loss is the one trained: at step 1 policy == reference (h = 0),
    so the logged loss is that loss type's value at zero margin (beta = 0.1)."""
    from rlaif.train.dpo import train_dpo

    s = train_dpo(_cfg(tiny_model_dir, tmp_path, max_steps=2, loss_type=loss_type, label_smoothing=0.1,
                       beta=0.1, logging_steps=1))
    assert s["loss_type"] == loss_type and s["steps"] == 2
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    at_zero = {"ipo": (0 - 1 / (2 * 0.1)) ** 2, "hinge": 1.0, "robust": math.log(2)}[loss_type]
    assert first["train/loss"] == pytest.approx(at_zero, abs=1e-3)


@pytest.mark.slow
def test_frozen_reference_equals_precomputed(tmp_path, tiny_model_dir):
    """reference=model and reference=precompute give the same first-step metrics."""
    from rlaif.train.dpo import train_dpo

    a = train_dpo(_cfg(tiny_model_dir, tmp_path / "a", max_steps=1, logging_steps=1))
    b = train_dpo(_cfg(tiny_model_dir, tmp_path / "b", max_steps=1, logging_steps=1, reference="model"))
    first = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0]) for d in ("a", "b")]
    assert first[0]["train/loss"] == pytest.approx(first[1]["train/loss"], abs=1e-5)
    assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], abs=1e-4)


@pytest.mark.slow
def test_lora_run_saves_adapter_and_merged_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlaif.train.dpo import train_dpo

    from rlaif.train.config import LoraOptions

    s = train_dpo(_cfg(tiny_model_dir, tmp_path, max_steps=2, lr=1e-2, lora=LoraOptions(enabled=True, r=4, alpha=8)))
    assert s["steps"] == 2
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in k for k in model.state_dict())


# ----------------------------------------------------------------------------- ref_model
@pytest.fixture(scope="module")
def other_reference(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny model with perturbed weights (same tokenizer): a reference that is not the starting policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("other-ref")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def _first_loss(out: Path) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]


def _table(model_dir: str, tokenizer_dir: str) -> torch.Tensor:
    """(N, 2) summed response log-probs [chosen, rejected] of ``model_dir`` on the train pairs, by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.train.modeling import response_logprobs

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pairs, _ = tokenize_rows(tok, load_splits(ASSETS)["train"], 1024, 512)
    with torch.no_grad():
        logps, _ = response_logprobs(model, collate(pairs, tok.pad_token_id))
    return torch.stack(logps.chunk(2), dim=1)


def test_ref_model_is_the_reference_and_the_default_is_the_starting_policy(tmp_path, tiny_model_dir,
                                                                          other_reference):
    """pi_ref = ref_model: its log-probs are the cached table, so step 1's loss is no longer log 2 (at
    step 1 pi_theta = the starting weights); empty or the starting model itself changes nothing; the
    frozen-model mode gives the same first step."""
    from rlaif.train.dpo import train_dpo

    runs = {"default": {}, "same": {"ref_model": tiny_model_dir}, "other": {"ref_model": other_reference},
            "other-frozen": {"ref_model": other_reference, "reference": "model"}}
    summaries = {name: train_dpo(_cfg(tiny_model_dir, tmp_path / name, max_steps=1, logging_steps=1, **kw))
                 for name, kw in runs.items()}
    loss = {name: _first_loss(tmp_path / name) for name in runs}
    assert loss["default"] == pytest.approx(math.log(2), abs=1e-5)
    assert loss["same"] == pytest.approx(loss["default"], abs=1e-6)
    assert abs(loss["other"] - math.log(2)) > 1e-3
    assert loss["other-frozen"] == pytest.approx(loss["other"], abs=1e-4)
    assert summaries["other"]["test"]["loss"] != pytest.approx(summaries["default"]["test"]["loss"], abs=1e-4)
    assert summaries["other"]["reference"] == other_reference and summaries["default"]["reference"] == tiny_model_dir

    tables = {name: torch.load(tmp_path / name / "ref_logps.pt") for name in ("default", "same", "other")}
    assert tables["same"]["key"] == tables["default"]["key"] != tables["other"]["key"]
    assert torch.allclose(tables["default"]["train"], _table(tiny_model_dir, tiny_model_dir), atol=1e-4)
    assert torch.allclose(tables["other"]["train"], _table(other_reference, tiny_model_dir), atol=1e-4)
    assert not torch.allclose(tables["other"]["train"], tables["default"]["train"], atol=1e-2)


def test_ref_model_is_part_of_the_settings(tmp_path, tiny_model_dir, other_reference):
    """A finished run is not taken for one with another reference."""
    from rlaif.errors import UserError
    from rlaif.train.dpo import train_dpo

    train_dpo(_cfg(tiny_model_dir, tmp_path, max_steps=1))
    with pytest.raises(UserError, match="ref_model"):
        train_dpo(_cfg(tiny_model_dir, tmp_path, max_steps=1, ref_model=other_reference))


def test_a_bad_ref_model_is_one_line_naming_the_option(tmp_path, tiny_model_dir, other_reference):
    from transformers import AutoTokenizer

    from rlaif.errors import UserError
    from rlaif.train.dpo import train_dpo

    with pytest.raises(UserError, match=r"option 'ref_model': model '.*nowhere'"):
        train_dpo(_cfg(tiny_model_dir, tmp_path / "a", max_steps=1, ref_model=str(tmp_path / "nowhere")))
    tok = AutoTokenizer.from_pretrained(other_reference)
    tok.add_tokens(["<not-in-the-policy>"])
    tok.save_pretrained(other_reference + "-vocab")
    import shutil

    for f in ("config.json", "model.safetensors"):
        shutil.copy(Path(other_reference) / f, Path(other_reference + "-vocab") / f)
    with pytest.raises(UserError, match="option 'ref_model': .* has another tokenizer") as e:
        train_dpo(_cfg(tiny_model_dir, tmp_path / "b", max_steps=1, ref_model=other_reference + "-vocab"))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_two_process_fsdp_run_with_ref_model_reaches_the_weights_of_one(tmp_path, tiny_model_dir, other_reference):
    """ref_model under `accelerate launch` (FSDP, 2 processes): each process scores its share of the pairs with
    the reference and the table is gathered; training ends where one process does."""
    from test_train_distributed import COMMON, TOLERANCE, _finish, _max_diff, _start, _train_lines

    from rlaif.cli import main

    extra = (f"ref_model={other_reference}",)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "dpo", "--data", str(ASSETS), "--model", tiny_model_dir, "--out", str(one), *COMMON, *extra,
                 "grad_accum=2"]) == 0
    _finish(_start("fsdp", tmp_path, tiny_model_dir, two, "dpo", extra))
    assert torch.allclose(torch.load(two / "ref_logps.pt")["train"], torch.load(one / "ref_logps.pt")["train"],
                          atol=1e-5)
    first = [_train_lines(out)[0]["train/loss"] for out in (one, two)]
    assert first[0] == pytest.approx(first[1], abs=1e-5) and abs(first[0] - math.log(2)) > 1e-3
    assert _max_diff(two, one) < TOLERANCE


def _full_size_backward_tensors(lengths: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
    """Backward of per-row attention over rows of ``lengths`` packed in one sequence: how many tensors of
    the full (1, heads, T, dim) shape backward makes, the q/k/v gradients, and those of each row alone."""
    from types import SimpleNamespace

    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig

    from rlaif.train.packing import varlen_attention

    torch.manual_seed(0)
    shape = (1, 2, sum(lengths), 8)
    qkv = [torch.randn(shape, requires_grad=True) for _ in range(3)]
    module = SimpleNamespace(config=LlamaConfig(), num_key_value_groups=1, layer_idx=0)
    position_ids = torch.tensor([[p for n in lengths for p in range(n)]])
    out, _ = varlen_attention(module, *qkv, None, position_ids=position_ids)
    weight = torch.randn_like(out)
    made: list[tuple[int, ...]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor) and not func._schema.is_mutable and result._base is None:
                made.append(tuple(result.shape))
            return result

    with Record():
        (out * weight).sum().backward()
    rows = []
    for s, e in zip([0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]], torch.tensor(lengths).cumsum(0).tolist()):
        q, k, v = (x.detach()[:, :, s:e].requires_grad_() for x in qkv)
        row = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        (row * weight[:, s:e]).sum().backward()
        rows.append([q.grad, k.grad, v.grad])
    alone = [torch.cat([r[i] for r in rows], dim=2) for i in range(3)]
    return sum(s == shape for s in made), [x.grad for x in qkv], alone


def test_per_row_attention_backward_assembles_each_gradient_once():
    """Packed rm/dpo attention runs per row; its q/k/v gradients are built once per layer (one cat), not
    as one zero-filled full-size tensor per row then summed (slicing's backward: a quarter of a 135M
    DPO step on CPU, BENCHMARKS.md); and they equal the gradients of each row alone."""
    six, grads, alone = _full_size_backward_tensors([5, 7, 3, 9, 4, 6])
    twelve, _, _ = _full_size_backward_tensors([3, 2, 4, 3, 1, 2, 5, 4, 3, 2, 3, 2])  # same 34 tokens
    assert six == twelve  # per row, a slice's backward made 3 full-size zero tensors and 3 sums
    for got, want in zip(grads, alone):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
