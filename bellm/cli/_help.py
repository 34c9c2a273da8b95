"""Help texts and arguments that several subcommands share."""

DATA_DIR_HELP = (
    "folder holding sts/ (default: $BELLM_DATA_DIR; else shared/data beside the working directory or the "
    "repository)"
)
MODEL_HELP = (
    "local model directory or .gguf file (default: the SmolLM2-135M-Instruct GGUF, found in $BELLM_MODEL_DIR, "
    "the cache $BELLM_CACHE (filled once with pip) or, in a source checkout, shared/data/models beside it)"
)


def add_encoder_arguments(parser) -> None:
    """``--adapter``, ``--from-layer``, ``--pooling`` and ``--prompt``: the encoder settings of ``bellm encode``
    and ``bellm serve`` (``parser`` may be an argument group)."""
    from bellm.common import POOLING_MODES

    parser.add_argument(
        "--adapter", default=None, help="a peft (LoRA) adapter directory, merged for inference"
    )
    parser.add_argument(
        "--from-layer",
        type=int,
        default=None,
        help="first bidirectional layer (negative counts from the end; default: the model's saved setting, "
        "else all causal)",
    )
    parser.add_argument("--pooling", default="last", choices=POOLING_MODES)
    parser.add_argument(
        "--prompt",
        default=None,
        help='a {text} template; default BeLLM\'s for last pooling, none otherwise; "" for none',
    )
