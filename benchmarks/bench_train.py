"""Benchmark: one BeLLM training step (forward, AnglE loss, backward, AdamW step) — bellm vs HF sdpa padded.

Both implementations train the same random-weight Llama with the same LoRA (r 64, alpha 128, every linear
layer, dropout 0) and the AnglE loss (BeLLM weights) on the same triplets, with layers ``>= from_layer``
bidirectional:

- ``bellm``: the model patched by :func:`bellm.patch`; anchors, positives and negatives packed into one
  varlen forward (no padding), last-token pooling with ``bellm_kernels.pool`` —
  :func:`bellm.trainer.batch_loss`.
- ``hf-sdpa-padded``: transformers' sdpa attention on a right-padded batch; each attention layer gets a 4D
  mask (causal + padding below ``from_layer``, padding only from it on — BiLLM's per-layer mask), last token
  gathered from the attention mask.

Texts are the real SNLI triplets under the BeLLM prompt, tokenized with the SmolLM2 tokenizer at max_length 60
(ids folded into the model's vocabulary); without the data or tokenizer, lengths drawn uniformly from 14..60.
``tokens_per_s`` counts real (non-pad) tokens for both. Full run (CUDA): LLaMA-2-7B shape (hidden 4096, 32
layers, 32 heads, MLP 11008, vocab 32000) in bf16, 16 triplets per step, from_layer -1; target >= 1.5x
tokens/s at <= the baseline's peak memory. Without CUDA: SmolLM2-135M shape (576, 30 layers, 9/3 heads, MLP
1536) in fp32, 4 triplets (there the attention runs through the reference path, which pads internally; no
kernel claim). ``smoke=True``: a 2-layer hidden-64 model, seconds on CPU, never judges speed.

    python -m benchmarks.bench_train [--smoke]
"""

from __future__ import annotations

import random
import time

import torch

from benchmarks._shapes import LLAMA2_7B, SMOLLM2_135M, TINY
from benchmarks._timing import measure, script_main, summarize


def _triplets(n: int, vocab: int, max_length: int = 60) -> list[list[list[int]]]:
    """``[anchors, positives, negatives]`` token ids of ``n`` SNLI triplets (or random lengths without
    data)."""
    try:
        from transformers import AutoTokenizer

        from bellm.models import default_data_dir, default_model
        from bellm.train_data import prompt_token_ids, read_train_data

        gguf_dir, gguf_file = default_model(download=False)
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
        data = read_train_data(default_data_dir() / "nli" / "snli_devtest_triplets.tsv.gz", limit=n)
        cols = [prompt_token_ids(tok, col, max_length=max_length) for col in data.texts]
        return [[[t % vocab for t in ids] for ids in col] for col in cols]
    except (FileNotFoundError, OSError, ImportError):
        rng = random.Random(0)
        return [
            [[rng.randrange(3, vocab) for _ in range(rng.randint(14, max_length))] for _ in range(n)]
            for _ in range(3)
        ]


def _model(shape: dict, device, dtype, r: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, LlamaConfig

    config = LlamaConfig(**shape, max_position_embeddings=512, pad_token_id=0, attention_dropout=0.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets))


def _padded_inputs(columns, device):
    flat = [ids for col in columns for ids in col]
    longest = max(len(ids) for ids in flat)
    input_ids = torch.zeros(len(flat), longest, dtype=torch.long)
    mask = torch.zeros(len(flat), longest, dtype=torch.bool)
    for i, ids in enumerate(flat):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = True
    return input_ids.to(device), mask.to(device)


def _padded_loss(model, loss_fn, columns, from_layer: int, input_ids, mask, dtype):
    """HF sdpa on a padded batch with a per-layer 4D mask (BiLLM's way of making layers bidirectional)."""
    n, longest = input_ids.shape
    neg = torch.finfo(dtype).min
    pad = mask[:, None, None, :]
    causal = torch.ones(longest, longest, dtype=torch.bool, device=mask.device).tril()
    masks = {
        True: torch.where(pad & causal, 0.0, neg).to(dtype),
        False: torch.where(pad.expand(-1, 1, longest, -1), 0.0, neg).to(dtype),
    }
    handles = []
    for name, m in model.named_modules():
        if name.endswith("self_attn"):

            def hook(module, args, kwargs, is_causal=m.layer_idx < from_layer):
                kwargs["attention_mask"] = masks[is_causal]
                return args, kwargs

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        hidden = model(input_ids=input_ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    last = mask.sum(1) - 1
    emb = hidden[torch.arange(n, device=hidden.device), last].float()
    k = len(columns[0])
    return loss_fn(emb[:k], emb[k : 2 * k], emb[2 * k :])


def _row(group, impl, timing, tokens, peak_mb, note) -> dict:
    return {
        "group": group,
        "impl": impl,
        **timing,
        "tokens_per_s": tokens / (timing["median_ms"] / 1000),
        "peak_mem_mb": peak_mb,
        "note": note,
    }


def collect(smoke: bool = False) -> list[dict]:
    from bellm.losses import AnglELoss
    from bellm.surgery import patch, unpatch
    from bellm.trainer import batch_loss

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    if smoke:
        shape, name, dtype, batch, reps = TINY, "tiny", torch.float32, 2, dict(rounds=2)
    elif cuda:
        shape, name, dtype, batch, reps = LLAMA2_7B, "llama2-7b", torch.bfloat16, 16, dict(rep_ms=2000)
    else:
        shape, name, dtype, batch, reps = SMOLLM2_135M, "smollm2-135m", torch.float32, 4, dict(rounds=5)
    from_layer = shape["num_hidden_layers"] - 1
    columns = _triplets(batch, shape["vocab_size"])
    real_tokens = sum(len(ids) for col in columns for ids in col)
    group = f"train step {name} {'bf16' if dtype == torch.bfloat16 else 'fp32'} {batch} triplets LoRA r64"
    model = _model(shape, device, dtype, r=64)
    loss_fn = AnglELoss()
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    rows = []
    input_ids, mask = _padded_inputs(columns, device)
    impls = {  # name -> (patched?, loss closure)
        "bellm": (True, lambda: batch_loss(model, loss_fn, columns, None, device)[0]),
        "hf-sdpa-padded": (
            False, lambda: _padded_loss(model, loss_fn, columns, from_layer, input_ids, mask, dtype)
        ),
    }

    def make_step(loss_of, optimizer):
        def step():
            with autocast:
                loss = loss_of()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def use(patched: bool) -> None:
        is_patched = getattr(model.get_base_model().config, "bellm", None) is not None
        if patched and not is_patched:
            patch(model, from_layer=from_layer)
        elif not patched and is_patched:
            unpatch(model)
        model.train()

    if cuda:  # one implementation after the other on an idle GPU; peak memory per implementation
        for impl, (patched, loss_of) in impls.items():
            use(patched)
            step = make_step(loss_of, torch.optim.AdamW(params, lr=1e-5))
            try:
                step()  # warm-up, optimizer state allocated
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                timing = measure(step, device=device, **reps)
                peak = torch.cuda.max_memory_allocated() / 2**20
                rows.append(_row(group, impl, timing, real_tokens, peak, ""))
            except torch.OutOfMemoryError as err:
                rows.append({"group": group, "impl": impl, "skipped": f"out of memory: {str(err)[:120]}"})
            finally:
                del step
                torch.cuda.empty_cache()
    else:  # shared CPU cores: alternate the implementations step by step so load changes hit both alike
        steps = {impl: make_step(loss_of, torch.optim.AdamW(params, lr=1e-5)) for impl, (_, loss_of) in
                 impls.items()}
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for round_ in range(reps["rounds"] + 1):
            for impl, (patched, _) in impls.items():
                use(patched)
                t0 = time.perf_counter()
                steps[impl]()
                if round_:  # round 0 is the warm-up
                    times[impl].append((time.perf_counter() - t0) * 1000)
        for impl, ts in times.items():
            rows.append(_row(group, impl, summarize(ts), real_tokens, None, ""))
    pad_note = (
        f"{real_tokens} real tokens, padded batch {tuple(input_ids.shape)} = {input_ids.numel()} tokens"
    )
    for r in rows:
        r.setdefault("note", "")
        if "skipped" not in r:
            r["note"] = pad_note + ("" if cuda else "; CPU: bellm attention is the reference path")
    return rows


def main() -> None:
    script_main(collect, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
