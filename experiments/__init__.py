"""Reproduce BeLLM's claims end to end with bellm's own API: turning point, untrained rows, trained arms,
RESULTS.md.

    python experiments/reproduce.py --plan  # measure throughput, print the full run's wall-time estimate
    python experiments/reproduce.py                   # run (or resume) everything, then write RESULTS.md
    python experiments/reproduce.py --report          # only regenerate RESULTS.md from the JSON results
    python experiments/reproduce.py --smoke --output /tmp/smoke   # tiny version for CI (minutes)

The claims (BeLLM, Li & Li 2024, with the paper's numbers): (a) a causal LLM has a *turning point*, a layer after
which its sentence embeddings get worse on STS; (b) making the attention layers after it bidirectional and training
with AnglE beats the same model kept causal (86.29 vs 85.96 average on STS12-16, STS-B, SICK-R with LLaMA-2-7B).

Stages (each writes ``<output>/stages/<name>.json`` atomically when it finishes and is skipped when that file
exists; training resumes from its own checkpoints, evaluation from a persisted embedding cache):

1. ``base``: the model, materialised once. A GGUF (the default SmolLM2-135M-Instruct) is de-quantised and
   saved as safetensors under ``<output>/base_model`` so every later load takes seconds, not a
   de-quantisation.
2. ``plan``: measured encode throughput (sentences/s on the evaluation sentences) and training step time; the
   full run's wall-time estimate (``--plan`` prints it and stops).
3. ``turning_point``: :func:`bellm.find_turning_point` on the *untrained, causal* model (STS-B **dev**, never
   the test sets; the final norm applied to every layer and constant layers undefined: docs/bidirectional.md, sections 2
   and 3)
   and a :func:`bellm.sweep_from_layer` over the ``from_layer`` values the arms use. Chooses ``k`` for BeLLM
   (below).
4. ``untrained-<row>``: :func:`bellm.evaluate_sts` (paper protocol, seven sets; on the CPU preset 300 sampled pairs
   per set, the same for every row, ``--eval-max-pairs 0`` for every pair) of the untrained model: causal,
   bidirectional from ``k``, all-bidirectional, the measured identity row ``from_layer=-1`` + last-token pooling,
   which equals causal exactly (docs/bidirectional.md, section 1) and is therefore shown, not trained, and mean
   pooling causal vs ``from_layer=-1`` (the last layer's bidirectionality alone, untrained).
5. ``train-<arm>-seed<s>`` / ``eval-<arm>-seed<s>``: :func:`bellm.train` with one budget for every arm (same
   data, steps, batch, LoRA, learning rate, seed) and :func:`bellm.evaluate_sts` of
   ``Encoder.from_pretrained(base, adapter=..., from_layer=..., pooling=...)``. Arms: causal; BeLLM from
   ``k``; a second depth (the upper quarter of the layers); all-bidirectional (``from_layer=0``); the last
   layer bidirectional with *mean* pooling (where the last layer can matter) and its control, causal with
   mean pooling. The headline pair (causal,
   BeLLM) runs with every seed in ``--seeds`` (at least two; default five) for seed-to-seed spread, and the
   report adds a paired bootstrap over the evaluated test pairs (:func:`pair_bootstrap`); the others with the
   first seed.

The depth study (``--depth-study``, :mod:`experiments.depth_study`) trains every arm with every seed, adds the
middle depth (L//2), a longer budget for causal and the best depth, and every test pair for one seed of both;
:mod:`experiments.depth_report` writes its sections of RESULTS.md.

Choosing ``k``: the turning point ``t`` (earliest layer with the best dev Spearman, :func:`bellm.find_turning_point`)
when ``t <= L-2``. When ``t >= L-1`` bidirectionality from ``t`` cannot change a last-token embedding
(docs/bidirectional.md, section 1), so ``k`` is the best-scoring layer among ``0..L-2`` of the same curve; the report
states which rule applied.

Training data: the real SNLI triplets (``nli/snli_devtest_triplets.tsv.gz`` in the data directory, 6,339 (anchor,
entailment, contradiction) triplets), the paper's kind of data (NLI only, AnglE's triplet format). STS-B train
pairs are *not* added: the paper trains on NLI only, STS-B is one of the seven evaluation tasks (in-domain
supervision would inflate it relative to the paper's protocol), and the same data goes to every arm anyway.

Nothing here is hand-typed into RESULTS.md: every number comes from the stage JSON files. A ``--smoke`` run is
marked as such in its RESULTS.md and its numbers mean nothing.

Layout: :mod:`experiments.settings` (what decides the numbers), :mod:`experiments.stages` (the run directory and
its stages), :mod:`experiments.stats` (the headline numbers and the paired bootstrap), :mod:`experiments.report`
(RESULTS.md from a template), :mod:`experiments.cli` (options and the entry point); ``reproduce.py`` is the
script.
"""
