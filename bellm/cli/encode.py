"""``bellm encode``: a text file in, resumable embedding shards out (:func:`bellm.encode_corpus`)."""

from __future__ import annotations

import argparse

from bellm.cli._help import MODEL_HELP, add_encoder_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bellm.corpus import FORMATS

    parser.add_argument(
        "--input", required=True, help="a .txt (one per line), .jsonl or .tsv file, optionally .gz"
    )
    parser.add_argument("--output", required=True, help="output directory (shards, run.json, index.json)")
    parser.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP,
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    add_encoder_arguments(parser)
    parser.add_argument(
        "--field", default="text", help="JSONL key / TSV column holding the text (default: text)"
    )
    parser.add_argument("--exclude-prompt", action="store_true", help="pool over the text's tokens only")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per sentence, prompt included (default 512, or the model's limit when smaller; longer "
        "texts are cut at the end of the text, with a warning)",
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per shard (default 10000)")
    parser.add_argument("--format", default="safetensors", choices=FORMATS)
    parser.add_argument("--batch-size", type=int, default=None, help="max sentences per packed batch")
    parser.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=None,
        help="token budget per packed batch (default 16384 on CUDA, 4096 on CPU)",
    )
    parser.add_argument(
        "--dtype", default=None, help="bf16 / fp16 / fp32 (default bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda:$LOCAL_RANK when CUDA is present, else cpu"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own code (off by default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError for a bad option or path, in milliseconds, before torch is imported or a model loaded."""
    from bellm.cli import _checks

    _checks.check_existing("--input", args.input, kind="file")
    _checks.check_existing("--model", args.model)
    _checks.check_existing("--adapter", args.adapter, kind="folder")
    _checks.check_from_layer(args.from_layer, args.model, args.gguf_file)
    _checks.check_prompt(args.prompt, args.pooling)
    for flag, value in (
        ("--max-length", args.max_length),
        ("--batch-size", args.batch_size),
        ("--max-tokens-per-batch", args.max_tokens_per_batch),
        ("--shard-size", args.shard_size),
    ):
        _checks.check_count(flag, value)
    _checks.check_output_dir("--output", args.output)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from bellm.corpus import encode_corpus, rank_device

    index = encode_corpus(
        args.input,
        args.output,
        model=args.model,
        text_field=args.field,
        shard_size=args.shard_size,
        format=args.format,
        batch_size=args.batch_size,
        max_tokens_per_batch=args.max_tokens_per_batch,
        normalize_embeddings=args.normalize,
        show_progress_bar=not args.no_progress,
        gguf_file=args.gguf_file,
        adapter=args.adapter,
        from_layer=args.from_layer,
        pooling=args.pooling,
        prompt=args.prompt,
        exclude_prompt=args.exclude_prompt,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device if args.device is not None else rank_device(),
        trust_remote_code=args.trust_remote_code,
    )
    state = "complete" if index["complete"] else f"{len(index['missing_shards'])} shards left to other ranks"
    print(
        f"bellm encode: {index['rows']} rows x {index['dim']} in {index['num_shards']} shards under "
        f"{args.output} ({state})"
    )
    return 0
