"""Reproduce BeLLM's claims end to end with bellm's own API (see :mod:`experiments` for the stages):

python experiments/reproduce.py --plan  # measure throughput, print the full run's wall-time estimate
python experiments/reproduce.py                   # run (or resume) everything, then write RESULTS.md
python experiments/reproduce.py --report          # only regenerate RESULTS.md from the JSON results
python experiments/reproduce.py --smoke --output /tmp/smoke   # tiny version for CI (minutes)
"""

import sys
from pathlib import Path

# The repository root instead of this script's folder: `experiments` and `bellm` import from this checkout.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
