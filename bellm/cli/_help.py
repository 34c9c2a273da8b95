"""Help texts that several subcommands share."""

DATA_DIR_HELP = (
    "folder holding sts/ (default: $BELLM_DATA_DIR; else shared/data beside the working directory or the "
    "repository)"
)
MODEL_HELP = (
    "local model directory or .gguf file (default: the SmolLM2-135M-Instruct GGUF, found in $BELLM_MODEL_DIR, "
    "the cache $BELLM_CACHE (filled once with pip) or, in a source checkout, shared/data/models beside it)"
)
