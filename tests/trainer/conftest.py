"""Fixtures for trainer tests: test-size tiny models and a three-task run config writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_run_config(tmp_path: Path, tiny_models_dir: Path) -> Callable[..., Path]:
    """Write a run config over the repo's tiny tasks (CRPG, CRRAFT, CODPO) with test-size settings.

    Keyword arguments override top-level keys (``training``, ``tasks``...); returns the config path.
    """

    def write(**overrides: object) -> Path:
        reward = {"model": str(tiny_models_dir / "reward"), "baseline": "reference"}
        small = {"batch_size": 2, "sampling": {"num_samples": 2, "max_new_tokens": 6}}
        config = {
            "policy": {"path": str(tiny_models_dir / "policy")},
            "tasks": [
                {"include": str(REPO / "tasks" / "tiny_arithmetic.yaml"), "reward": reward, **small},
                # The gold a_bar passes the judges, so CRRAFT's fallback trains even a random test model.
                {"include": str(REPO / "tasks" / "tiny_instructions.yaml"), "reward": reward, **small},
                {
                    "include": str(REPO / "tasks" / "tiny_json.yaml"),
                    "reward": dict(reward, baseline="generated"),
                    "weight": 0.5,
                    **small,
                },
            ],
            "training": {"max_steps": 3, "learning_rate": 1.0e-3, "seed": 0},
            "output_dir": str(tmp_path / "run"),
            "logging": {"progress": "none"},
        }
        config.update(overrides)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write
