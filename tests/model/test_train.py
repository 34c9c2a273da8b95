"""BeLLM training on CPU with a tiny random Llama (hidden 64, 4 layers, the real SmolLM2 tokenizer's vocabulary)
and the real SNLI triplets: loss decreases, gradients reach LoRA below and above k, the packed step equals a
padded eager reference, kill -9 + resume is bitwise identical, 2-process gloo DDP equals one process with the
global batch, the adapter round-trips, bad input fails clearly."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from bellm import losses
from bellm.train_data import DataError, prompt_token_ids, read_train_data
from bellm.trainer import TrainConfig, batch_loss, build_model, train

ROOT = Path(__file__).resolve().parents[2]
NLI = ROOT.parent / "shared" / "data" / "nli" / "snli_devtest_triplets.tsv.gz"
STSB_DEV = ROOT.parent / "shared" / "data" / "sts" / "stsb_dev.tsv.gz"
if not NLI.is_file():
    from bellm.models import default_data_dir

    try:
        NLI = default_data_dir() / "nli" / "snli_devtest_triplets.tsv.gz"
        STSB_DEV = default_data_dir() / "sts" / "stsb_dev.tsv.gz"
    except FileNotFoundError:
        pass
pytestmark = pytest.mark.skipif(not NLI.is_file(), reason="shared/data/nli not found")
K = 2  # from_layer: layers 0, 1 causal, 2, 3 bidirectional


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved with the real SmolLM2 tokenizer (loaded offline from the GGUF, through the
    converted-GGUF cache: seconds, where converting the tokenizer alone takes about 10 s)."""
    from bellm.models import default_model, load_model_and_tokenizer

    try:
        gguf_dir, gguf_file = default_model(download=False)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    path = tmp_path_factory.mktemp("tiny_llama")
    _, tok = load_model_and_tokenizer(gguf_dir / gguf_file, device="cpu")
    tiny_model("llama", num_layers=4, vocab=len(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _config(model_dir, out, **kw) -> TrainConfig:
    base = dict(
        data=str(NLI),
        output_dir=str(out),
        model=str(model_dir),
        from_layer=K,
        max_examples=64,
        batch_size=4,
        max_steps=4,
        lr=1e-3,
        warmup_steps=1,
        lora_r=8,
        lora_alpha=16,
        save_steps=0,
        progress=False,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def _losses(out) -> list[float]:
    return [r["loss"] for r in _log(out) if "loss" in r]


def _adapter(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def _columns(model_dir, n=4, start=0):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    data = read_train_data(NLI, limit=start + n)
    return [prompt_token_ids(tok, col[start : start + n]) for col in data.texts]


# ---------------------------------------------------------------------------- training


def test_loss_decreases_over_30_steps(model_dir, tmp_path):
    # the same 8 triplets every step (one micro-batch per epoch), so the loss must fall
    result = train(
        _config(
            model_dir,
            tmp_path / "run",
            max_examples=8,
            batch_size=8,
            max_steps=30,
            lora_dropout=0.0,
            lr=2e-3,
            warmup_steps=2,
            scheduler="constant",
        )
    )
    curve = _losses(tmp_path / "run")
    assert len(curve) == 30 and result["step"] == 30
    assert sum(curve[-5:]) / 5 < 0.5 * sum(curve[:3]) / 3, curve


def test_gradients_reach_lora_below_and_above_k(model_dir):
    cfg = _config(model_dir, "unused", lora_dropout=0.0)
    model, _, num_layers = build_model(cfg, torch.device("cpu"))
    loss, _ = batch_loss(model, losses.AnglELoss(), _columns(model_dir), None, torch.device("cpu"))
    loss.backward()
    for layer in range(num_layers):
        grads = [p.grad for n, p in model.named_parameters() if f"layers.{layer}." in n and "lora_B" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), f"layer {layer} has no grad"
    # and the bidirectional layers really are bidirectional: k is honoured by the patch
    attn = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    assert [m.is_causal for m in attn] == [True, True, False, False]


def _padded_reference_loss(model, columns, from_layer):
    """Eager, right-padded forward; each layer gets its own 4D mask (causal + padding below k, padding
    above)."""
    import bellm_kernels

    flat = [ids for col in columns for ids in col]
    n, longest = len(flat), max(len(ids) for ids in flat)
    input_ids = torch.zeros(n, longest, dtype=torch.long)
    mask = torch.zeros(n, longest, dtype=torch.bool)
    for i, ids in enumerate(flat):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = True
    neg = torch.finfo(torch.float32).min
    pad = mask[:, None, None, :]
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    masks = {
        True: torch.where(pad & causal, 0.0, neg),
        False: torch.where(pad.expand(-1, 1, longest, -1), 0.0, neg),
    }
    handles = []
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            is_causal = m.layer_idx < from_layer

            def hook(module, args, kwargs, is_causal=is_causal):
                kwargs["attention_mask"] = masks[is_causal]
                return args, kwargs

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        hidden = model(input_ids=input_ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    emb = bellm_kernels.reference.pool(hidden, mode="last", attention_mask=mask).float()
    k = len(columns[0])
    return losses.AnglELoss()(emb[:k], emb[k : 2 * k], emb[2 * k :])


def test_packed_step_equals_padded_eager_reference(model_dir):
    from peft import LoraConfig, get_peft_model

    from bellm.surgery import patch

    columns = _columns(model_dir, n=4, start=10)
    assert len({len(ids) for col in columns for ids in col}) > 1  # really ragged

    def lora_model(attn):
        m = tiny_model("llama", num_layers=4, vocab=49152, attn_implementation=attn)
        m.load_state_dict(_base_weights(model_dir))
        if attn == "sdpa":
            m = patch(m, from_layer=K)
        torch.manual_seed(0)
        m = get_peft_model(
            m,
            LoraConfig(
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        )
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in sorted(m.named_parameters()):
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        return m.train()

    packed = lora_model("sdpa")
    loss_packed, _ = batch_loss(packed, losses.AnglELoss(), columns, None, torch.device("cpu"))
    loss_packed.backward()
    eager = lora_model("eager")
    loss_ref = _padded_reference_loss(eager, columns, K)
    loss_ref.backward()
    torch.testing.assert_close(loss_packed, loss_ref, rtol=1e-5, atol=1e-5)
    ref_grads = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    checked = 0
    for n, p in packed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)
            checked += 1
    assert checked == 4 * 7 * 2


def _base_weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


# ---------------------------------------------------------------------------- resume / DDP


def _cli(model_dir, out, *extra, env=None):
    cmd = [
        sys.executable,
        "-m",
        "bellm",
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(NLI),
        "--output",
        str(out),
        "--from-layer",
        str(K),
        "--max-examples",
        "96",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--seed",
        "3",
        "--no-progress",
        *extra,
    ]
    return cmd


def _env(**kw):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TRITON_INTERPRET="0",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(kw)
    return env


def test_kill_and_resume_equals_uninterrupted(model_dir, tmp_path):
    steps = ["--max-steps", "40", "--save-steps", "4"]
    full = subprocess.Popen(
        _cli(model_dir, tmp_path / "full", *steps), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    killed = subprocess.Popen(
        _cli(model_dir, tmp_path / "killed", *steps),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        if latest.is_file() and int(latest.read_text().strip()[5:]) >= 8:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    resumed = subprocess.run(
        _cli(model_dir, tmp_path / "killed", *steps, "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out, err = full.communicate(timeout=180)
    assert full.returncode == 0, err[-3000:]
    assert [r["step"] for r in _log(tmp_path / "killed") if "loss" in r] == list(range(1, 41))
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")  # bitwise
    a, b = _adapter(tmp_path / "killed"), _adapter(tmp_path / "full")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_equal_one_process_with_global_batch(model_dir, tmp_path):
    common = ["--max-steps", "3", "--save-steps", "0", "--lora-dropout", "0"]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "bellm",
            *_cli(model_dir, tmp_path / "ddp", *common)[3:],
        ]
        + ["--batch-size", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    train(
        _config(
            model_dir,
            tmp_path / "one",
            max_examples=96,
            batch_size=4,
            max_steps=3,
            lora_dropout=0.0,
            warmup_steps=2,
            seed=3,
        )
    )
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "ddp")), torch.tensor(_losses(tmp_path / "one")), rtol=1e-5, atol=1e-5
    )
    a, b = _adapter(tmp_path / "ddp"), _adapter(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


# ---------------------------------------------------------------------------- adapter


def test_adapter_round_trip(model_dir, tmp_path):
    from peft import PeftModel

    from bellm.encoder import Encoder
    from bellm.models import load_model_and_tokenizer
    from bellm.surgery import patch

    out = tmp_path / "run"
    train(_config(model_dir, out, max_steps=3, lr=5e-3, lora_dropout=0.0))
    saved = json.loads((out / "bellm_encoder.json").read_text())
    assert saved["from_layer"] == K and saved["pooling"] == "last" and "{text}" in saved["prompt"]
    columns = _columns(model_dir, n=3, start=20)
    texts = read_train_data(NLI, limit=23).texts[0][20:23]

    base, _ = load_model_and_tokenizer(model_dir, device="cpu")
    loaded = PeftModel.from_pretrained(patch(base, from_layer=K), str(out)).eval()
    from bellm.trainer import embed_packed

    with torch.no_grad():
        ours = embed_packed(loaded, columns[0], torch.device("cpu"))
    fresh, _ = load_model_and_tokenizer(model_dir, device="cpu")
    with torch.no_grad():
        untrained = embed_packed(patch(fresh, from_layer=K), columns[0], torch.device("cpu"))
    assert not torch.allclose(ours, untrained, atol=1e-4)  # the adapter changed something
    enc = Encoder.from_pretrained(model_dir, adapter=out, device="cpu")  # settings from the adapter dir
    assert (enc.from_layer, enc.max_length) == (K, 60)
    got = torch.as_tensor(enc.encode(texts))
    torch.testing.assert_close(got.float(), ours.float(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- bad input


def test_bad_data_files(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("anchor\tpositive\nA\tB\n")
    with pytest.raises(
        DataError, match=r"bad.tsv:2: missing column\(s\) negative.*anchor/text, positive, negative"
    ):
        read_train_data(bad, "triplets")
    empty = tmp_path / "empty.tsv.gz"
    with gzip.open(empty, "wt") as f:
        f.write("anchor\tpositive\tnegative\n")
    with pytest.raises(DataError, match="no data rows"):
        read_train_data(empty)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"text1": "a", "text2": "b", "score": 1})
        + "\n"
        + json.dumps({"text1": "a", "text2": "b", "score": "high"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"pairs.jsonl:2: score 'high' is not a number"):
        read_train_data(pairs)
    jl = tmp_path / "trip.jsonl"
    jl.write_text(json.dumps({"text": "a", "positive": "b", "negative": "c"}) + "\n")
    data = read_train_data(jl)
    assert data.kind == "triplets" and data.texts == [["a"], ["b"], ["c"]]
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_train_data(tmp_path / "nope.tsv")


def test_prompt_truncation_keeps_closing_quote(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    short, long = prompt_token_ids(tok, ["A dog runs.", "word " * 100], max_length=20)
    assert short == tok('The representative word for sentence A dog runs. is:"')["input_ids"]
    assert len(long) == 20 and tok.decode(long).endswith(' is:"')
    assert tok.decode(long).startswith("The representative word for sentence word")
    with pytest.raises(ValueError, match="max_length=5"):
        prompt_token_ids(tok, ["word " * 100], max_length=5)


def test_bad_settings_and_output_dir(model_dir, tmp_path):
    with pytest.raises(ValueError, match="from_layer = 9 is out of range for this 4-layer model"):
        train(_config(model_dir, tmp_path / "a", from_layer=9))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "something.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(_config(model_dir, tmp_path / "b"))
    # --overwrite refuses a folder bellm did not create (no run record), deleting nothing
    with pytest.raises(FileExistsError, match="not created by bellm train.*nothing was deleted"):
        train(_config(model_dir, tmp_path / "b", max_steps=1, overwrite=True))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["something.txt"]
    # --overwrite replaces a previous run but keeps files it does not own
    train(_config(model_dir, tmp_path / "c", max_steps=1))
    (tmp_path / "c" / "something.txt").write_text("x")
    train(_config(model_dir, tmp_path / "c", max_steps=1, overwrite=True))
    assert (tmp_path / "c" / "something.txt").exists() and (
        tmp_path / "c" / "adapter_model.safetensors"
    ).exists()
    with pytest.raises(FileExistsError):
        train(_config(model_dir, tmp_path / "c", max_steps=1))


def test_nan_loss_stops_with_step_and_saves_nothing(model_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.AnglELoss.__call__

    def poisoned(self, *args, **kw):
        calls["n"] += 1
        loss = real(self, *args, **kw)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(losses.AnglELoss, "__call__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(_config(model_dir, out, max_steps=5, save_steps=2))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (out / "adapter_model.safetensors").exists()
    assert [r["step"] for r in _log(out)] == [1, 2]
    state = torch.load(out / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and all(
        torch.isfinite(t).all() for t in _adapter(out / "checkpoints" / "step-2").values()
    )


def test_pooling_field_mean_trains_records_and_old_run_config_resumes(model_dir, tmp_path):
    """``pooling="mean"`` changes the loss, is written to bellm_encoder.json, and a run_config.json written
    before the field existed still resumes (a missing field counts as its default)."""
    last = train(_config(model_dir, tmp_path / "last", max_steps=2, save_steps=1))
    mean = train(_config(model_dir, tmp_path / "mean", max_steps=2, pooling="mean"))
    assert last["loss"] != mean["loss"]
    enc = json.loads((tmp_path / "mean" / "bellm_encoder.json").read_text())
    assert enc["pooling"] == "mean"
    run_config = tmp_path / "last" / "run_config.json"
    saved = json.loads(run_config.read_text())
    del saved["pooling"]
    run_config.write_text(json.dumps(saved))
    resumed = train(_config(model_dir, tmp_path / "last", max_steps=2, save_steps=1, resume=True))
    assert resumed["step"] == 2 and resumed["loss"] == last["loss"]  # resumed from step 1: same step 2
    with pytest.raises(ValueError, match="pooling"):
        train(_config(model_dir, tmp_path / "last", max_steps=2, save_steps=1, pooling="mean", resume=True))
    with pytest.raises(ValueError, match="pooling must be"):
        train(_config(model_dir, tmp_path / "bad", pooling="cls"))


def test_scored_pairs_with_accumulation_and_gradient_checkpointing(model_dir, tmp_path):
    stsb_train = STSB_DEV.parent / "stsb_train.tsv.gz"
    out = tmp_path / "pairs"
    result = train(
        _config(
            model_dir,
            out,
            data=str(stsb_train),
            max_examples=16,
            batch_size=4,
            grad_accum=2,
            max_steps=2,
            gradient_checkpointing=True,
            cosine_w=1.0,
            scheduler="cosine",
            eval_data=str(STSB_DEV),
            eval_steps=1,
            eval_max_pairs=24,
        )
    )
    assert result["step"] == 2 and math.isfinite(result["loss"])
    rows = _log(out)
    assert [r["step"] for r in rows if "eval_spearman" in r] == [1, 2]
    assert (out / "best" / "adapter_model.safetensors").exists()
    assert json.loads((out / "run_config.json").read_text())["grad_accum"] == 2
