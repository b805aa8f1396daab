"""wstream: timm image classifiers run block by block from memory-mapped safetensors weights.

    import wstream
    m = wstream.create_model("timm/convnext_large.fb_in22k_ft_in1k", threads=2)
    x = m.transform("cat.jpg")[None]          # float32 [1, 3, H, W], timm's eval preprocessing
    logits = m(x)                             # numpy float32 [1, 1000]

Everything runs in the Rust library (the same pipeline as the `wstream` command); this package adds
the Python side of its results.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np

from ._native import (
    BudgetError,
    Ensemble,
    Error,
    FileError,
    InputError,
    Model,
    ModelError,
    __version__,
    create_model,
    peak_rss,
)

__all__ = [
    "BudgetError",
    "Ensemble",
    "EnsembleResult",
    "Error",
    "FileError",
    "InputError",
    "Model",
    "ModelError",
    "Profile",
    "create_model",
    "peak_rss",
    "__version__",
]


def _flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Profile:
    """What each block of a run cost: the records `wstream profile --format json` prints.

    `records` are dicts as the CLI writes them (nested: `compute_faults: {minor, major}`, ...);
    `rows()` the same with nested keys joined by `_` (`compute_faults_major`), one flat dict per block,
    ready for `pandas.DataFrame(p.rows())`; `str(p)` the CLI's profile table.
    """

    def __init__(self, records_json: str, table: str) -> None:
        self.records: List[Dict[str, Any]] = json.loads(records_json)
        self._table = table

    def rows(self) -> List[Dict[str, Any]]:
        return [_flatten(r) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __str__(self) -> str:
        return self._table

    def __repr__(self) -> str:
        return f"<wstream.Profile of {len(self.records)} blocks>"


class EnsembleResult:
    """An ensemble's answer for a batch of N inputs.

    `names`: the models' names; `logits`: each model's float32 `[N, num_classes]` logits (model order);
    `probs`: the combined float32 `[N, num_classes]` (mean of the models' softmax by default);
    `answers`: the CLI's JSON answer per input (top classes per model and for the ensemble);
    `profile`: the per-block records when asked for (`profile=True`), else None.
    """

    def __init__(
        self,
        names: List[str],
        logits: List[np.ndarray],
        probs: np.ndarray,
        answers_json: str,
        profile: Optional[Profile] = None,
    ) -> None:
        self.names = list(names)
        self.logits = list(logits)
        self.probs = probs
        self.answers: List[Dict[str, Any]] = json.loads(answers_json)
        self.profile = profile

    def __repr__(self) -> str:
        return f"<wstream.EnsembleResult of {self.probs.shape[0]} inputs, models {self.names}>"
