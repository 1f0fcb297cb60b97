"""Model names -> local folders: the embedded alias, local folders, hub ids, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.errors import UserError
from rlaif.models import DEFAULT_MODEL, cache_dir, check_causal_lm, resolve_model


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLAIF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rlaif"
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.slow  # converts the embedded GGUF on a fresh machine (~46 s)
def test_alias_resolves_to_cached_safetensors_folder(embedded_model_dir: str) -> None:
    assert DEFAULT_MODEL == "smollm2-135m"
    path = Path(resolve_model("smollm2-135m"))
    assert path == Path(embedded_model_dir) and path.name == "SmolLM2-135M-Instruct"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    check_causal_lm(str(path))  # no error


def test_local_folder_passes_through(tiny_model_dir: str) -> None:
    assert resolve_model(tiny_model_dir) == tiny_model_dir


def test_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such folder.*known: smollm2-135m"):
        resolve_model(str(tmp_path / "missing-model"))
    with pytest.raises(UserError, match="no such folder"):
        resolve_model("not-an-alias")


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))


def test_non_causal_models_are_rejected(tmp_path: Path) -> None:
    from transformers import BertConfig, T5Config

    bert = tmp_path / "bert"
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg.architectures = ["BertModel"]
    cfg.save_pretrained(bert)
    with pytest.raises(UserError, match="not a causal language model"):
        check_causal_lm(resolve_model(str(bert)))
    t5 = tmp_path / "t5"
    T5Config(d_model=32, num_layers=1, num_heads=2).save_pretrained(t5)
    with pytest.raises(UserError, match="'t5' is not a causal language model"):
        check_causal_lm(str(t5))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable config"):
        check_causal_lm(str(tmp_path / "broken"))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as err:
        resolve_model("some-org/some-model")
    msg = str(err.value)
    assert "some-org/some-model" in msg and "hub could not provide it" in msg and "\n" not in msg
