"""End-to-end encode benchmark: bellm.Encoder vs HF sdpa padded batches (unsorted / length-sorted, batch 64)
and sentence-transformers' encode, on the same model in one run.

- GPU: a random-weight LLaMA-2-7B-shaped ``LlamaModel`` in bf16, built on the GPU from a config (no download).
- CPU: the SmolLM2-135M shape (30 layers, hidden 576, GQA 9/3) with random fp32 weights; 64 sentences per
  group (the GPU run uses 2048, or ``BELLM_BENCH_ENCODE_SENTENCES`` for a time-boxed run) to fit 2 shared
  cores.
- Groups: ``synthetic`` = sentences of uniform 16..96 tokens (a word-level tokenizer with one token per word,
  no prompt, last-token pooling); ``stsb`` = the real STS-B test sentences with the SmolLM2 tokenizer (when
  the GGUF is present) and BeLLM's prompt.
- ``tokens_per_s`` counts real tokens (no padding); ``roofline_frac`` = tokens/s over the GEMM roofline
  ``matmul_rate / (2 * non-embedding params)``, the matmul rate measured in the same run. Nothing asserts on
  speed.

``python -m benchmarks.bench_encode [--smoke]`` prints a markdown table.
"""

from __future__ import annotations

import copy
import csv
import gzip
import os
import random
import tempfile

import torch

from benchmarks._shapes import LLAMA2_7B, SMOLLM2_135M, TINY
from benchmarks._timing import measure, script_main

BATCH = 64


def _gpu_sentences() -> int:
    """Sentences per group on a GPU: 2048, or ``BELLM_BENCH_ENCODE_SENTENCES``."""
    value = os.environ.get("BELLM_BENCH_ENCODE_SENTENCES", "2048")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"BELLM_BENCH_ENCODE_SENTENCES={value!r}: give a positive whole number of sentences")
    return int(value)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _config(smoke: bool, device: torch.device, vocab: int):
    from transformers import LlamaConfig

    shape = TINY if smoke else (LLAMA2_7B if device.type == "cuda" else SMOLLM2_135M)
    return LlamaConfig(
        **{**shape, "vocab_size": vocab},
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _model(config, device, dtype):
    from transformers import LlamaModel

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def _word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
    )


def _synthetic(n: int, vocab: int, lo: int = 16, hi: int = 96) -> list[str]:
    rng = random.Random(0)
    return [" ".join(f"w{rng.randrange(4, vocab)}" for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _stsb(n: int) -> list[str] | None:
    from bellm.models import default_data_dir

    try:
        path = default_data_dir() / "sts" / "stsb_test.tsv.gz"
    except FileNotFoundError:
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    return sentences[:n]


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from bellm.models import default_model

    try:
        d, f = default_model(download=False)
    except FileNotFoundError:
        return None
    return AutoTokenizer.from_pretrained(str(d), gguf_file=f, local_files_only=True)


def _matmul_rate(device, dtype, hidden: int, inter: int) -> float:
    """FLOP/s of a (4096 x hidden) @ (hidden x inter) matmul, the MLP shape of the model."""
    a = torch.randn(4096 if device.type == "cuda" else 1024, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, inter, device=device, dtype=dtype)
    t = measure(lambda: a @ b, device=device, rep_ms=200)
    return 2 * a.shape[0] * hidden * inter / (t["median_ms"] / 1000)


def _hf_padded(model, tok, sentences, *, sort: bool, prompt: str):
    from bellm_kernels import reference

    head, tail = prompt.split("{text}")
    texts = [head + s + tail for s in sentences]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if sort else list(range(len(texts)))
    device = next(model.parameters()).device

    def run():
        out = [None] * len(texts)
        with torch.inference_mode():
            for i in range(0, len(order), BATCH):
                idx = order[i : i + BATCH]
                enc = tok([texts[j] for j in idx], padding=True, return_tensors="pt").to(device)
                hidden = model(**enc, use_cache=False).last_hidden_state
                pooled = reference.pool(hidden, mode="last", attention_mask=enc["attention_mask"]).float()
                for j, row in zip(idx, pooled):
                    out[j] = row
        return torch.stack(out)

    return run


def _sentence_transformers(model, tok, config, prompt: str, tmp: str):
    """ST Transformer + lasttoken Pooling around the same in-memory model (its loader needs a directory, so a
    1-layer copy of the architecture is saved and its weights swapped for the benchmark model)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    small.vocab_size = min(config.vocab_size, 1024)
    _model(small, "cpu", torch.float32).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    module = Transformer(tmp)
    module.model = model
    device = next(model.parameters()).device
    st = SentenceTransformer(
        modules=[module, Pooling(config.hidden_size, pooling_mode="lasttoken")], device=str(device)
    )
    head, tail = prompt.split("{text}")

    def run(sentences):
        return st.encode([head + s + tail for s in sentences], batch_size=BATCH, convert_to_tensor=True)

    return run


def _rows(group, sentences, model, tok, config, prompt, params_nonemb, rate, device, note) -> list[dict]:
    from bellm.encoder import Encoder
    from bellm.surgery import unpatch

    lengths = [len(x) for x in tok([prompt.replace("{text}", s) for s in sentences])["input_ids"]]
    tokens = sum(lengths)
    roofline_tps = rate / (2 * params_nonemb)
    rows = []

    def record(impl, fn, reference=None):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            got = fn()
            t = measure(fn, device=device, warmup_ms=0, rep_ms=1, min_reps=2)
        except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            rows.append({"group": group, "impl": impl, "skipped": f"{type(err).__name__}: {str(err)[:200]}"})
            return None
        tps = tokens / (t["median_ms"] / 1000)
        row = {
            "group": group,
            "impl": impl,
            **t,
            "tokens_per_s": tps,
            "roofline_frac": tps / roofline_tps,
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "note": f"{len(sentences)} sentences, {tokens} tokens; {note}",
        }
        if reference is not None:
            row["max_abs_diff_vs_hf"] = float((got.float().cpu() - reference.float().cpu()).abs().max())
        rows.append(row)
        return got

    ref = record("hf-sdpa-padded", _hf_padded(model, tok, sentences, sort=False, prompt=prompt))
    record("hf-sdpa-sorted", _hf_padded(model, tok, sentences, sort=True, prompt=prompt), ref)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            st = _sentence_transformers(model, tok, config, prompt, tmp)
            record("sentence-transformers", lambda: st(sentences), ref)
        except Exception as err:  # noqa: BLE001
            rows.append(
                {
                    "group": group,
                    "impl": "sentence-transformers",
                    "skipped": f"{type(err).__name__}: {str(err)[:200]}",
                }
            )
    enc = Encoder(model, tok, prompt=prompt, pooling="last")
    record("bellm", lambda: enc.encode(sentences, convert_to_tensor=True, show_progress_bar=False), ref)
    unpatch(model)
    return rows


def collect(smoke: bool = False) -> list[dict]:
    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 16 if smoke else (_gpu_sentences() if device.type == "cuda" else 64)
    smol_tok = None if smoke else _smollm2_tokenizer()
    vocab = 128 if smoke else max(32000 if device.type == "cuda" else 49152, len(smol_tok) if smol_tok else 0)
    config = _config(smoke, device, vocab)
    model = _model(config, device, dtype)
    params_nonemb = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    rate = _matmul_rate(device, dtype, config.hidden_size, config.intermediate_size)
    shape = "tiny" if smoke else ("LLaMA-2-7B" if device.type == "cuda" else "SmolLM2-135M")
    note = f"{shape} shape, random weights, {str(dtype).replace('torch.', '')}, {device.type}"
    rows = _rows(
        "synthetic 16-96 tok",
        _synthetic(n, min(vocab, 32000)),
        model,
        _word_tokenizer(min(vocab, 32000)),
        config,
        "{text}",
        params_nonemb,
        rate,
        device,
        note,
    )
    sts = _stsb(n)
    if smol_tok is not None and sts:
        from bellm.encoder import BELLM_PROMPT

        rows += _rows(
            "stsb (BeLLM prompt)",
            sts,
            model,
            smol_tok,
            config,
            BELLM_PROMPT,
            params_nonemb,
            rate,
            device,
            note,
        )
    elif not smoke:
        rows.append(
            {
                "group": "stsb (BeLLM prompt)",
                "impl": "bellm",
                "skipped": "STS-B data or the SmolLM2 tokenizer not found",
            }
        )
    for r in rows:
        r.setdefault("matmul_tflops", rate / 1e12)
    return rows


def main() -> None:
    script_main(collect, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
