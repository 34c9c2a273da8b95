"""Server tests: the model-test helpers (char tokenizer, tiny models) on the path; skipped without the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

for _module in ("fastapi", "uvicorn", "prometheus_client", "openai", "httpx"):
    pytest.importorskip(_module, reason="install the serve and dev extras: pip install -e '.[dev,serve]'")
