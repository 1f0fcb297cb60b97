"""How rlaif builds a vLLM engine from a BackendConfig (vllm.LLM replaced: no engine starts)."""

from __future__ import annotations

import pytest

from rlaif.backends.base import BackendConfig


@pytest.mark.parametrize("asked, expected, note", [(4096, 2048, True), (1024, 1024, False), (None, None, False)])
def test_max_model_len_is_capped_at_the_models_positions(asked, expected, note, tiny_model_dir: str,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The tiny model has 2048 positions: the default 4096 would make vLLM refuse to start with a
    validation traceback; rlaif uses 2048 and says so. A smaller value, or none, is passed unchanged."""
    vllm = pytest.importorskip("vllm")
    from rlaif.backends import vllm as rlaif_vllm

    seen: dict = {}
    monkeypatch.setattr(vllm, "LLM", lambda **kw: seen.update(kw))
    rlaif_vllm.build_llm(BackendConfig(engine="vllm", model=tiny_model_dir, max_model_len=asked))
    assert seen.get("max_model_len") == expected
    assert ("2048 positions: using 2048" in capsys.readouterr().err) == note


def test_model_config_is_read_once(tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_causal_lm reads the config; build_llm reuses it to cap max_model_len."""
    vllm = pytest.importorskip("vllm")
    import transformers

    from rlaif.backends import vllm as rlaif_vllm

    reads: list[str] = []
    real = transformers.AutoConfig.from_pretrained

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", counting)
    monkeypatch.setattr(vllm, "LLM", lambda **kw: None)
    rlaif_vllm.build_llm(BackendConfig(engine="vllm", model=tiny_model_dir, max_model_len=4096))
    assert reads == [tiny_model_dir]
