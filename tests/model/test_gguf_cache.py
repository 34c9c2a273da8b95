"""The converted-GGUF cache of ``bellm.models.load_model_and_tokenizer``.

A tiny Llama GGUF (Q8_0 weights, a byte-level BPE tokenizer with special tokens and merges, written here with the
``gguf`` package) checks the cache's contract in milliseconds: bitwise the same weights and token ids as the direct
load, for ``causal_lm`` True and False and any dtype, from one folder written atomically; the opt-outs; a cache
that cannot be written; a lost race; a half-written or foreign folder. The real SmolLM2 GGUF checks the same
equality once (skipped when absent) through the user's cache, so the rest of the suite loads the converted folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

import numpy as np
import pytest
import torch

import bellm.models
from bellm.models import gguf_cache_folder, load_model_and_tokenizer

TEXTS = ["the cat in the hat", "A man is playing a flute.", "  in the  end\n", "é ñ 中文 \t!", ""]


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: the printable stand-in character of each byte 0..255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path, seed: int = 0) -> None:
    """A 2-layer Llama (hidden 32, 4 query / 2 kv heads, vocab 264) as GGUF: Q8_0 matrices, float32 norms, tied
    embeddings, a GPT-2 style tokenizer (3 special tokens, 256 byte tokens, 5 merges) and a chat template."""
    import gguf

    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, ff, layers = 32, 4, 2, 64, 2
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + _byte_tokens() + [m.replace(" ", "") for m in merges]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")

    def matrix(name: str, rows: int, cols: int) -> None:
        data = rng.standard_normal((rows, cols), dtype=np.float32) * 0.1
        packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))

    matrix("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden)
        matrix(f"blk.{i}.attn_k.weight", hidden * kv_heads // heads, hidden)
        matrix(f"blk.{i}.attn_v.weight", hidden * kv_heads // heads, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden)
        matrix(f"blk.{i}.ffn_gate.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ff)
    norm("output_norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ``$BELLM_CACHE`` for one test (the tiny GGUF is not the real model: keep it out of the user's)."""
    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BELLM_GGUF_CACHE", raising=False)
    return tmp_path / "cache"


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name  # bitwise (no NaNs in these weights)
    assert a.config.to_dict().get("quantization_config") is None
    assert b.config.to_dict().get("quantization_config") is None


def assert_same_tokenizer(a, b, texts) -> None:
    assert a(texts)["input_ids"] == b(texts)["input_ids"]
    assert a.special_tokens_map == b.special_tokens_map
    assert a.all_special_ids == b.all_special_ids
    assert (a.bos_token_id, a.eos_token_id, a.pad_token_id, a.unk_token_id) == (
        b.bos_token_id, b.eos_token_id, b.pad_token_id, b.unk_token_id
    )
    assert a.get_vocab() == b.get_vocab()
    assert a.padding_side == b.padding_side
    assert a.chat_template == b.chat_template
    chat = [{"role": "user", "content": texts[0]}]
    assert a.apply_chat_template(chat, tokenize=False) == b.apply_chat_template(chat, tokenize=False)


def _no_conversion(*args, **kwargs):
    raise AssertionError("the cache was converted again instead of read")


def test_cache_loads_bitwise_what_the_gguf_loads(tiny_gguf, cache, monkeypatch):
    kw = dict(device="cpu", dtype=torch.float32)
    direct_lm, direct_tok = load_model_and_tokenizer(tiny_gguf, causal_lm=True, cache_gguf=False, **kw)
    direct_base, _ = load_model_and_tokenizer(tiny_gguf, cache_gguf=False, **kw)
    assert not cache.exists()  # cache_gguf=False writes nothing

    cached_lm, cached_tok = load_model_and_tokenizer(tiny_gguf, causal_lm=True, **kw)  # converts
    folder = gguf_cache_folder(tiny_gguf)
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]  # no temporary folder left
    record = json.loads((folder / "bellm_gguf.json").read_text())
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["source"] == str(tiny_gguf.resolve())
    assert (folder / "model.safetensors").is_file()

    monkeypatch.setattr(bellm.models, "_convert_gguf", _no_conversion)
    cached_base, _ = load_model_and_tokenizer(tiny_gguf, **kw)  # reads the same folder
    assert type(cached_lm) is type(direct_lm) and type(cached_base) is type(direct_base)
    assert_same_weights(cached_lm, direct_lm)
    assert_same_weights(cached_base, direct_base)
    assert_same_tokenizer(cached_tok, direct_tok, TEXTS)
    assert cached_lm.name_or_path == direct_lm.name_or_path == str(tiny_gguf.parent)
    assert not cached_lm.training and not cached_base.training

    for dtype in (torch.bfloat16, torch.float16):  # dtype= applies to the float32 cache as to the GGUF
        direct, _ = load_model_and_tokenizer(tiny_gguf, dtype=dtype, device="cpu", cache_gguf=False)
        cached, _ = load_model_and_tokenizer(tiny_gguf, dtype=dtype, device="cpu")
        assert next(cached.parameters()).dtype == dtype
        assert_same_weights(cached, direct)


def test_cached_model_saves_like_any_other(tiny_gguf, cache, tmp_path):
    from transformers import AutoModel

    model, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32)
    model.save_pretrained(str(tmp_path / "saved"))
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    assert_same_weights(AutoModel.from_pretrained(str(tmp_path / "saved")), model)


@pytest.mark.parametrize("off", ["0", "false", "OFF"])
def test_environment_turns_the_cache_off(tiny_gguf, cache, monkeypatch, off):
    monkeypatch.setenv("BELLM_GGUF_CACHE", off)
    model, _ = load_model_and_tokenizer(tiny_gguf, device="cpu")
    assert not cache.exists()
    assert model.config.num_hidden_layers == 2


def test_unwritable_cache_falls_back_to_the_direct_load_with_a_warning(tiny_gguf, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BELLM_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(bellm.models, "_convert_gguf", _no_conversion)  # fails before any conversion work
    with caplog.at_level(logging.WARNING, logger="bellm.models"):
        model, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32)
    direct, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32, cache_gguf=False)
    assert_same_weights(model, direct)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot write the converted-GGUF cache" in warning and str(blocker) in warning
    assert blocker.read_text().startswith("a file")


def test_a_writer_that_loses_the_race_discards_only_its_own_folder(tiny_gguf, cache, monkeypatch):
    convert = bellm.models._convert_gguf
    folder = gguf_cache_folder(tiny_gguf)

    def convert_while_another_process_finishes_first(gguf_path, identity, target, trust_remote_code):
        winner = target.parent / ".winner.tmp"
        winner.mkdir()
        convert(gguf_path, identity, winner, trust_remote_code)
        (winner / "written-by-the-winner").write_text("")
        os.replace(winner, folder)
        convert(gguf_path, identity, target, trust_remote_code)

    monkeypatch.setattr(bellm.models, "_convert_gguf", convert_while_another_process_finishes_first)
    model, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32)
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]
    assert (folder / "written-by-the-winner").is_file()
    direct, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32, cache_gguf=False)
    assert_same_weights(model, direct)


def _transformers_class_state():
    """What transformers' from_pretrained swaps while it loads and must put back (see models.py)."""
    from transformers import PreTrainedModel

    return {name: getattr(PreTrainedModel, name) for name in ("init_weights", "tie_weights", "_init_weights")} | {
        name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_", "zeros_")
    }


def test_loads_at_once_convert_once_and_the_others_wait(tiny_gguf, cache, monkeypatch, caplog):
    """Two loads of one GGUF at once (threads here; processes lock the same way): the second waits for the
    first's conversion and reads its folder instead of converting again. The two loads of the folder that follow
    take turns: transformers' loading swaps class attributes, and overlapping loads would leave them swapped (later
    loads then keep a tied lm_head on the meta device)."""
    before = _transformers_class_state()
    convert = bellm.models._convert_gguf
    converters, converting, finish = [], threading.Event(), threading.Event()

    def slow_convert(*args):
        converters.append(threading.current_thread().name)
        converting.set()
        assert finish.wait(60)
        convert(*args)

    monkeypatch.setattr(bellm.models, "_convert_gguf", slow_convert)
    models = {}

    def load():
        name = threading.current_thread().name
        models[name] = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32)[0]

    first = threading.Thread(target=load, name="first")
    second = threading.Thread(target=load, name="second")
    with caplog.at_level(logging.INFO, logger="bellm.models"):
        first.start()
        assert converting.wait(60)
        second.start()
        second.join(1.0)
        assert second.is_alive()  # waiting for the lock, not converting
        finish.set()
        first.join(60)
        second.join(60)
    assert converters == ["first"] and set(models) == {"first", "second"}
    assert any("another process is converting" in r.getMessage() for r in caplog.records)
    direct, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", dtype=torch.float32, cache_gguf=False)
    assert_same_weights(models["first"], direct)
    assert_same_weights(models["second"], direct)
    assert _transformers_class_state() == before


def test_loads_in_one_process_take_turns(tiny_gguf, cache, monkeypatch):
    """Two threads loading at once never overlap inside transformers' from_pretrained: each load waits up to
    0.5 s there for the other to come in, which only the lock keeps out."""
    import transformers

    load_model_and_tokenizer(tiny_gguf, device="cpu")  # converts: both loads below read the folder
    original = transformers.AutoModel.from_pretrained  # what load_model_and_tokenizer uses by default
    inside, most_inside, other_came_in, guard = [0], [0], threading.Event(), threading.Lock()

    def from_pretrained(*args, **kwargs):
        with guard:
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
            if inside[0] == 2:
                other_came_in.set()
        other_came_in.wait(0.5)
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", from_pretrained)
    before = _transformers_class_state()
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(load_model_and_tokenizer(tiny_gguf, device="cpu")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(loaded) == 2 and most_inside[0] == 1
    assert _transformers_class_state() == before


def test_a_failed_conversion_leaves_nothing_behind(tiny_gguf, cache, monkeypatch):
    convert = bellm.models._convert_gguf

    def convert_then_fail(gguf_path, identity, target, trust_remote_code):
        convert(gguf_path, identity, target, trust_remote_code)
        raise KeyboardInterrupt  # after every file was written, before the rename

    monkeypatch.setattr(bellm.models, "_convert_gguf", convert_then_fail)
    with pytest.raises(KeyboardInterrupt):
        load_model_and_tokenizer(tiny_gguf, device="cpu")
    assert list((cache / "gguf").iterdir()) == []


def test_a_folder_bellm_did_not_complete_is_refused_not_read_or_deleted(tiny_gguf, cache):
    folder = gguf_cache_folder(tiny_gguf)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match=r"converted-GGUF cache folder .* is damaged .*bellm_gguf.json.*delete it"):
        load_model_and_tokenizer(tiny_gguf, device="cpu")
    assert (folder / "config.json").read_text() == "{}"
    model, _ = load_model_and_tokenizer(tiny_gguf, device="cpu", cache_gguf=False)  # the way out it names
    assert model.config.num_hidden_layers == 2


def test_the_key_follows_the_file(tiny_gguf, cache, tmp_path):
    copy = tmp_path / tiny_gguf.name
    copy.write_bytes(tiny_gguf.read_bytes())
    assert gguf_cache_folder(copy) != gguf_cache_folder(tiny_gguf)  # another path
    before = gguf_cache_folder(copy)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 1))
    assert gguf_cache_folder(copy) != before  # rewritten in place
    assert gguf_cache_folder(copy).parent == cache / "gguf"


@pytest.mark.slow
def test_real_smollm2_cache_matches_the_direct_load(monkeypatch):
    """The real GGUF through the user's cache (CI starts empty, so this converts and later tests read it): the
    cached folder loads bitwise the direct load's weights and tokenizer. When the cache is empty, its conversion
    is handed the direct load (the very call it makes, as the tiny GGUF's tests check) instead of de-quantising
    the GGUF a second time."""
    from bellm.models import default_data_dir, default_model

    try:
        directory, name = default_model(download=False)
        data_dir = default_data_dir()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    import gzip

    with gzip.open(data_dir / "sts" / "stsb_test.tsv.gz", "rt", encoding="utf-8") as f:
        next(f)  # genre, filename, year, id, score, sentence1, sentence2
        rows = [line.rstrip("\n").split("\t") for _, line in zip(range(200), f)]
    texts = [r[-2] for r in rows] + [r[-1] for r in rows] + TEXTS
    kw = dict(device="cpu", dtype=torch.float32)
    direct, direct_tok = load_model_and_tokenizer(directory / name, causal_lm=True, cache_gguf=False, **kw)
    load_transformers = bellm.models._load_transformers

    def converted_already(path, gguf_file, torch_dtype, causal_lm, trust_remote_code):
        if gguf_file is not None:  # the conversion's call: float32 causal LM, as the direct load above
            assert (torch_dtype, causal_lm, trust_remote_code) == (torch.float32, True, False)
            return direct, direct_tok
        return load_transformers(path, gguf_file, torch_dtype, causal_lm, trust_remote_code)

    monkeypatch.setattr(bellm.models, "_load_transformers", converted_already)
    cached_base, cached_tok = load_model_and_tokenizer(directory / name, **kw)
    cached_lm, _ = load_model_and_tokenizer(directory / name, causal_lm=True, **kw)
    assert (gguf_cache_folder(directory / name) / "bellm_gguf.json").is_file()
    assert_same_weights(cached_lm, direct)
    assert_same_weights(cached_base, direct.model)  # AutoModel reads the base model of the saved causal LM
    assert_same_tokenizer(cached_tok, direct_tok, texts)
