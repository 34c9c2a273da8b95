"""bellm: make decoder LLMs fast, correct sentence encoders (BeLLM-style per-layer bidirectional attention).

The public names are imported lazily so that ``import bellm`` stays cheap (no transformers import until needed).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "patch": "bellm.surgery",
    "unpatch": "bellm.surgery",
    "load": "bellm.surgery",
    "Encoder": "bellm.encoder",
    "to_sentence_transformer": "bellm.st_plugin",
    "encode_corpus": "bellm.corpus",
    "evaluate_sts": "bellm.evaluate",
    "find_turning_point": "bellm.turning_point",
    "sweep_from_layer": "bellm.turning_point",
    "train": "bellm.trainer",
    "TrainConfig": "bellm.trainer",
    "losses": "bellm.losses",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = module if name == "losses" else getattr(module, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'bellm' has no attribute {name!r}")
