"""In-place weight updates of a running vLLM engine, for RL rollouts: a shared-memory mirror.

The trainer lays out every synced parameter in one flat file-backed tensor in /dev/shm
(`SharedMirror`); each vLLM worker maps the same file (`WeightUpdateExtension`, mixed into vLLM's
worker class by ``worker_extension_cls``) and loads the mapped views in place. No disk, no
serialisation; the file is unlinked as soon as both sides have mapped it.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    import torch


class WeightUpdateExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); runs inside each worker."""

    def _rlaif_reload(self, weights: Iterable[tuple[str, "torch.Tensor"]]) -> None:
        """vLLM's in-place reload (CPU kernels repack their weights), then re-tie a tied LM head:
        the reload skips it ("ParallelLMHead: Failed to load weights") and on CPU it keeps the
        old packed copy of the embeddings, so the logits would come from the old weights.
        On CPU the worker keeps freed memory (`rlaif.io.heap`): each repack frees the old packed
        weights and allocates new ones, ~85k page faults per sync of the 135M model otherwise."""
        from rlaif.io.heap import keep_freed_memory

        keep_freed_memory(self.device_config.device_type)  # type: ignore[attr-defined]
        runner = self.model_runner  # type: ignore[attr-defined]
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        model = runner.get_model()
        tied = getattr(runner.model_config.hf_text_config, "tie_word_embeddings", False)
        head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
        if tied and head is not None and embed is not None:
            model.lm_head = head.tie_weights(embed)
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)

    def rlaif_map_shared(self, path: str, numel: int, dtype: str,
                         layout: list[tuple[str, int, list[int]]]) -> int:
        """Map the trainer's shared-memory mirror (`SharedWeights`): one flat file, one view per
        ``(name, offset, shape)``; kept until `rlaif_unmap_shared`. Returns the bytes mapped."""
        import torch

        flat = torch.from_file(path, shared=True, size=numel, dtype=getattr(torch, dtype))
        self._rlaif_shared = [(name, flat[off:off + _numel(shape)].view(shape)) for name, off, shape in layout]
        return flat.numel() * flat.element_size()

    def rlaif_load_shared(self) -> int:
        """Load the mapped mirror into the model in place (vLLM's reload: CPU kernels repack)."""
        shared = self._rlaif_shared
        self._rlaif_reload(shared)
        return len(shared)

    def rlaif_unmap_shared(self) -> None:
        self._rlaif_shared = []

    def rlaif_page_faults(self) -> int:
        """The worker's minor page faults so far (getrusage)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def rlaif_compute_threads(self) -> int:
        """The worker's torch threads (on CPU: one per core vLLM left to its compute, `cpu_reserved_cores`)."""
        import torch

        return torch.get_num_threads()


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class SharedMirror:
    """One flat, file-backed shared tensor in /dev/shm holding every synced parameter, mapped by
    this process and by the engine's workers (`WeightUpdateExtension.rlaif_map_shared`, called through
    ``rpc``, `rlaif.backends.vllm.VLLMBackend._rpc`)."""

    def __init__(self, rpc: Callable[..., list[Any]], layout: list[tuple[str, tuple[int, ...]]],
                 dtype: "torch.dtype", timeout_s: float) -> None:
        import torch

        self.layout = layout
        offsets, total = [], 0
        for _, shape in layout:
            offsets.append(total)
            total += _numel(shape)
        fd, path = tempfile.mkstemp(prefix="rlaif-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.truncate(total * torch.empty((), dtype=dtype).element_size())
            flat = torch.from_file(path, shared=True, size=total, dtype=dtype)
            spec = [(name, off, list(shape)) for (name, shape), off in zip(layout, offsets)]
            rpc("rlaif_map_shared", path, total, str(dtype).removeprefix("torch."), spec, timeout=timeout_s)
        finally:
            os.unlink(path)  # both sides hold their mapping; the memory goes with the last of them
        self.views = [flat[off:off + _numel(shape)].view(shape) for (_, shape), off in zip(layout, offsets)]
