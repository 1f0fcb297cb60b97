"""The pipeline's two engines, policy and judge, loaded lazily and shared when they are the same model."""

from __future__ import annotations

from typing import Callable

from rlaif.backends import Backend, BackendConfig, load_backend
from rlaif.backends.base import RayOptions


def _same_engine(a: BackendConfig, b: BackendConfig) -> bool:
    return a.engine == b.engine and a.model == b.model


class Engines:
    """Loads the policy and the judge lazily; one engine when both are the same model and engine.
    A role with ``replicas`` > 1 gets a pool of ``factory``-built engines on Ray (`rlaif.backends.pool`)."""

    def __init__(self, policy: BackendConfig | None, judge: BackendConfig | None,
                 factory: Callable[[BackendConfig], Backend] = load_backend, ray: RayOptions | None = None) -> None:
        self.configs = {"policy": policy, "judge": judge}
        self.factory = factory
        self.ray = ray
        self.loaded: dict[str, Backend] = {}

    def get(self, role: str) -> Backend:
        if role in self.loaded:
            return self.loaded[role]
        other = "judge" if role == "policy" else "policy"
        mine, theirs = self.configs[role], self.configs[other]
        if other in self.loaded and theirs is not None and mine is not None and _same_engine(mine, theirs):
            self.loaded[role] = self.loaded[other]
            return self.loaded[role]
        if other in self.loaded:  # a different model: free the other one's memory first
            self.loaded.pop(other).close()
        assert mine is not None
        if mine.replicas > 1:
            from rlaif.backends.pool import EnginePool

            self.loaded[role] = EnginePool(mine, self.factory, self.ray, role)
        else:
            self.loaded[role] = self.factory(mine)
        return self.loaded[role]

    def close(self) -> None:
        for backend in {id(b): b for b in self.loaded.values()}.values():
            backend.close()
        self.loaded.clear()
