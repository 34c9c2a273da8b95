"""bellm's benchmark suite: one module per op/path, peers in the same run, a report script (``benchmarks.report``)."""
