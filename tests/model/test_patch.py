"""bellm.patch on tiny random-weight models (CPU, float32): per-layer bidirectional attention.

The reference is independent of bellm: the *unpatched eager* model, with a hand-built 4D additive mask
handed to each decoder layer by a forward pre-hook (causal + padding below ``from_layer``, padding only from
it on, block-diagonal for packed rows).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import FAMILIES, tiny_config, tiny_model

import bellm
from bellm.packing import pack

ATOL = 2e-5
N_LAYERS = 3


# ----------------------------------------------------------------------------------------------------
# helpers: inputs and the independent eager reference
# ----------------------------------------------------------------------------------------------------


def random_sentences(lengths, seed=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def padded_batch(sentences, side):
    """``side``: "right", "left", or a list of sides per row (mixed padding). Pad id 0."""
    width = max(len(s) for s in sentences)
    sides = [side] * len(sentences) if isinstance(side, str) else side
    ids = torch.zeros(len(sentences), width, dtype=torch.long)
    mask = torch.zeros(len(sentences), width, dtype=torch.long)
    for i, (s, sd) in enumerate(zip(sentences, sides)):
        sl = slice(0, len(s)) if sd == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def decoder_layers(model):
    hf = bellm.surgery._transformers_model(model)
    lists = (m for n, m in hf.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList))
    return next(lists)


def reference_masks(attention_mask, from_layer, num_layers, seq_ids=None, pads_visible=False):
    """Per layer additive float masks ``(B, 1, S, S)``: 0 = allowed, finfo.min = hidden."""
    key_real = attention_mask.bool()
    batch, seqlen = key_real.shape
    allowed = key_real[:, None, None, :].expand(batch, 1, seqlen, seqlen)
    if seq_ids is not None:  # packed rows: block diagonal
        allowed = allowed & (seq_ids[:, None, :, None] == seq_ids[:, None, None, :])
    tril = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
    masks = []
    for layer in range(num_layers):
        if layer < from_layer:
            a = allowed & tril
        elif pads_visible:
            a = torch.ones_like(allowed)
        else:
            a = allowed
        masks.append(torch.zeros(a.shape).masked_fill(~a, torch.finfo(torch.float32).min))
    return masks


def eager_reference(
    model, from_layer, input_ids, attention_mask=None, seq_ids=None, pads_visible=False, **forward_kw
):
    """Run the *unpatched eager* ``model`` with our own mask in each decoder layer."""
    hf = bellm.surgery._transformers_model(model)
    assert hf.config._attn_implementation == "eager" and not hasattr(hf.config, "bellm")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    layers = decoder_layers(model)
    masks = reference_masks(attention_mask, from_layer, len(layers), seq_ids, pads_visible)
    handles = []
    for layer, mask in zip(layers, masks):

        def hook(module, args, kwargs, mask=mask):
            kwargs["attention_mask"] = mask
            return args, kwargs

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        return model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **forward_kw
        )
    finally:
        for h in handles:
            h.remove()


def assert_real_close(a, b, mask, atol=ATOL):
    """Compare ``(B, S, D)`` tensors on real tokens only."""
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=atol, rtol=1e-4)


def hidden(model, **kw):
    with torch.no_grad():
        return model(output_hidden_states=True, **kw)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", num_layers=N_LAYERS)


@pytest.fixture
def fresh(llama):
    return copy.deepcopy(llama)


MIXED = ([7, 4, 1, 6], ["right", "right", "left", "left"])  # includes a length-1 sentence


# ----------------------------------------------------------------------------------------------------
# equivalence
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_from_layer_num_layers_equals_unpatched(impl):
    ref = tiny_model("llama", num_layers=N_LAYERS, attn_implementation=impl)
    model = bellm.patch(copy.deepcopy(ref), from_layer=N_LAYERS)
    ids, mask = padded_batch(random_sentences(MIXED[0]), MIXED[1])
    want = hidden(ref, input_ids=ids, attention_mask=mask)
    got = hidden(model, input_ids=ids, attention_mask=mask)
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert_real_close(g, w, mask)


@pytest.mark.parametrize("from_layer", [0, 1, 2, 3, -1, -3])
def test_matches_eager_reference(fresh, llama, from_layer):
    ids, mask = padded_batch(random_sentences(MIXED[0], seed=from_layer + 10), MIXED[1])
    with torch.no_grad():
        want = eager_reference(llama, from_layer if from_layer >= 0 else from_layer + N_LAYERS, ids, mask)
    got = hidden(bellm.patch(fresh, from_layer=from_layer), input_ids=ids, attention_mask=mask)
    assert len(got.hidden_states) == N_LAYERS + 1
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert_real_close(g, w, mask)


def test_reference_is_sensitive(llama):
    """Guard against a test that cannot fail: the causal and the bidirectional references differ."""
    ids, mask = padded_batch(random_sentences(MIXED[0]), MIXED[1])
    with torch.no_grad():
        a = eager_reference(llama, 0, ids, mask).last_hidden_state
        b = eager_reference(llama, N_LAYERS, ids, mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize("from_layer", [0, 1, 2])
def test_bidirectionality_is_real(fresh, from_layer):
    """Changing the last token changes the first token's state from layer ``from_layer`` on, not before."""
    model = bellm.patch(fresh, from_layer=from_layer)
    ids = torch.tensor([random_sentences([6], seed=3)[0]])
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] + 7) % 120 + 3
    a, b = hidden(model, input_ids=ids).hidden_states, hidden(model, input_ids=ids2).hidden_states
    for j in range(1, N_LAYERS + 1):  # hidden_states[j] = output of layer j - 1
        changed = (a[j][0, 0] - b[j][0, 0]).abs().max().item() > 1e-6
        assert changed == (j - 1 >= from_layer), (j, from_layer)


def test_from_layer_minus_one_is_a_no_op_for_the_last_token(llama, fresh):
    """With from_layer=-1 the last real token's final state equals the causal model's (docs/bidirectional.md)."""
    sentences = random_sentences([7, 5, 3], seed=4)
    ids, mask = padded_batch(sentences, ["right", "left", "right"])
    causal = hidden(llama, input_ids=ids, attention_mask=mask).last_hidden_state
    patched = hidden(bellm.patch(fresh, from_layer=-1), input_ids=ids, attention_mask=mask).last_hidden_state
    last = torch.tensor([max(i for i in range(ids.shape[1]) if mask[b, i]) for b in range(len(sentences))])
    rows = torch.arange(len(sentences))
    torch.testing.assert_close(patched[rows, last], causal[rows, last], atol=ATOL, rtol=1e-4)
    first = torch.tensor([min(i for i in range(ids.shape[1]) if mask[b, i]) for b in range(len(sentences))])
    assert (patched[rows, first] - causal[rows, first]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------
# invariance: alone, right/left padded, batch size 1, packed
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("from_layer", [None, N_LAYERS, 1, 0])
def test_invariance_padding_and_packing(fresh, from_layer):
    model = fresh if from_layer is None else bellm.patch(fresh, from_layer=from_layer)
    sentences = random_sentences([5, 1, 8, 3], seed=5)
    alone = [hidden(model, input_ids=torch.tensor([s])).last_hidden_state[0] for s in sentences]
    ones = [torch.ones(1, len(s), dtype=torch.long) for s in sentences]  # batch size 1 with a mask
    with_mask = [
        hidden(model, input_ids=torch.tensor([s]), attention_mask=m).last_hidden_state[0]
        for s, m in zip(sentences, ones)
    ]
    for a, b in zip(alone, with_mask):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4)
    for side in ("right", "left", ["left", "right", "right", "left"]):
        ids, mask = padded_batch(sentences, side)
        out = hidden(model, input_ids=ids, attention_mask=mask).last_hidden_state
        for i, a in enumerate(alone):
            torch.testing.assert_close(out[i][mask[i].bool()], a, atol=ATOL, rtol=1e-4)
    if from_layer is None:
        return  # the unpatched eager model ignores cu_seq_lens (packing is the patched model's job)
    batch = pack(sentences)
    cu = batch.cu_seqlens.tolist()
    outs = [
        hidden(model, **batch.model_kwargs()).last_hidden_state[0],
        hidden(model, input_ids=batch.input_ids, position_ids=batch.position_ids).last_hidden_state[0],
    ]
    for out in outs:
        for i, a in enumerate(alone):
            torch.testing.assert_close(out[cu[i] : cu[i + 1]], a, atol=ATOL, rtol=1e-4)


def test_packed_matches_block_diagonal_reference(llama, fresh):
    sentences = random_sentences([4, 6, 2], seed=6)
    batch = pack(sentences)
    seq_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 6, 2]))[None]
    with torch.no_grad():
        want = eager_reference(llama, 1, batch.input_ids, seq_ids=seq_ids, position_ids=batch.position_ids)
    got = hidden(bellm.patch(fresh, from_layer=1), **batch.model_kwargs())
    for w, g in zip(want.hidden_states, got.hidden_states):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=1e-4)


def test_plain_arange_position_ids_is_one_sequence(llama, fresh):
    ids = torch.tensor([random_sentences([6], seed=7)[0]])
    with torch.no_grad():
        want = eager_reference(llama, 1, ids).last_hidden_state
    got = hidden(bellm.patch(fresh, from_layer=1), input_ids=ids, position_ids=torch.arange(6)[None])
    torch.testing.assert_close(got.last_hidden_state, want, atol=ATOL, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# billm_compat, peft + gradients, families
# ----------------------------------------------------------------------------------------------------


def test_billm_compat_makes_pads_visible_in_bidirectional_layers(llama, fresh):
    """Pads are keys in layers >= k (so padding changes real tokens there), and nothing changes below k, in
    unpadded or packed inputs, or with no bidirectional layer."""
    sentences = random_sentences([6, 3], seed=8)
    ids, mask = padded_batch(sentences, ["right", "left"])
    strict = hidden(bellm.patch(copy.deepcopy(llama), from_layer=2), input_ids=ids, attention_mask=mask)
    compat = hidden(bellm.patch(fresh, from_layer=2, billm_compat=True), input_ids=ids, attention_mask=mask)
    assert fresh.config.bellm == {"from_layer": 2, "billm_compat": True}
    for j in range(3):  # embeddings, layer 0, layer 1: causal, identical
        assert_real_close(compat.hidden_states[j], strict.hidden_states[j], mask)
    assert (compat.last_hidden_state - strict.last_hidden_state)[1][mask[1].bool()].abs().max() > 1e-3
    assert_real_close(compat.last_hidden_state[:1], strict.last_hidden_state[:1], mask[:1])  # row 0: no pads
    batch = pack(sentences)
    torch.testing.assert_close(
        hidden(fresh, **batch.model_kwargs()).last_hidden_state,
        hidden(bellm.patch(copy.deepcopy(llama), from_layer=2), **batch.model_kwargs()).last_hidden_state,
        atol=ATOL,
        rtol=1e-4,
    )
    bellm.patch(fresh, from_layer=N_LAYERS, billm_compat=True)
    want = hidden(llama, input_ids=ids, attention_mask=mask).last_hidden_state
    assert_real_close(hidden(fresh, input_ids=ids, attention_mask=mask).last_hidden_state, want, mask)


def _lora(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    return peft.get_peft_model(model, config)


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_peft_lora_gradients_match_eager_reference(llama):
    model = _lora(copy.deepcopy(llama))
    ids, mask = padded_batch(random_sentences([6, 4, 1], seed=9), ["right", "left", "right"])
    weight = torch.randn(*ids.shape, llama.config.hidden_size, generator=torch.Generator().manual_seed(0))
    real = mask.bool()[..., None]

    assert bellm.patch(model, from_layer=1) is model
    assert model.get_base_model().config._attn_implementation == "bellm"
    loss = (model(input_ids=ids, attention_mask=mask).last_hidden_state * weight * real).sum()
    loss.backward()
    got = _lora_grads(model)
    assert got and all(g.abs().sum() > 0 for g in got.values())

    model.zero_grad()
    bellm.unpatch(model)
    loss_ref = (eager_reference(model, 1, ids, mask).last_hidden_state * weight * real).sum()
    loss_ref.backward()
    want = _lora_grads(model)
    torch.testing.assert_close(loss, loss_ref, atol=1e-4, rtol=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=name)


def _family_model(family, **kw):
    return tiny_model(family, num_layers=N_LAYERS, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family(family):
    if family == "gemma2":  # attention logit softcapping is on by default: a clear error
        with pytest.raises(NotImplementedError, match="softcapping"):
            bellm.patch(_family_model(family), from_layer=1)
        ref = _family_model(family, attn_logit_softcapping=None)
    else:
        ref = _family_model(family)
    model = bellm.patch(copy.deepcopy(ref), from_layer=1)
    ids, mask = padded_batch(random_sentences(MIXED[0], seed=11), MIXED[1])
    with torch.no_grad():
        want = eager_reference(ref, 1, ids, mask)
    got = hidden(model, input_ids=ids, attention_mask=mask)
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert_real_close(g, w, mask)
    batch = pack(random_sentences([3, 5], seed=12))
    out = hidden(model, **batch.model_kwargs()).last_hidden_state[0]
    alone = hidden(model, input_ids=batch.input_ids[:, 3:]).last_hidden_state[0]
    torch.testing.assert_close(out[3:], alone, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_active_sliding_window_raises(family):
    model = bellm.patch(_family_model(family, sliding_window=4), from_layer=1)
    short = torch.tensor([random_sentences([4])[0]])
    hidden(model, input_ids=short)  # the window cuts nothing off: allowed
    with pytest.raises(NotImplementedError, match="sliding_window = 4"):
        hidden(model, input_ids=torch.tensor([random_sentences([6])[0]]))
    batch = pack(random_sentences([3, 4, 2]))  # packed: only the longest sequence counts
    hidden(model, **batch.model_kwargs())


def test_mistral_without_sliding_window():
    ref = _family_model("mistral", sliding_window=None)
    model = bellm.patch(copy.deepcopy(ref), from_layer=0)
    ids, mask = padded_batch(random_sentences([9, 5], seed=13), ["left", "right"])
    with torch.no_grad():
        want = eager_reference(ref, 0, ids, mask).last_hidden_state
    assert_real_close(hidden(model, input_ids=ids, attention_mask=mask).last_hidden_state, want, mask)


# ----------------------------------------------------------------------------------------------------
# causal LM, generation, repr, re-patch, unpatch, save/load
# ----------------------------------------------------------------------------------------------------


def test_causal_lm_and_generate():
    ref = tiny_model("llama", num_layers=N_LAYERS, causal_lm=True)
    model = bellm.patch(copy.deepcopy(ref), from_layer=N_LAYERS)
    ids, mask = padded_batch(random_sentences([5, 3], seed=14), "left")
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(**kw), ref.generate(**kw))
        logits = model(input_ids=ids, attention_mask=mask).logits
        assert_real_close(logits, ref(input_ids=ids, attention_mask=mask).logits, mask)
        bellm.patch(model, from_layer=-1)
        assert model.generate(**kw).shape == (2, ids.shape[1] + 4)


def test_repr_shows_bidirectional_layers(fresh):
    before = repr(fresh)
    bellm.patch(fresh, from_layer=1)
    attn = [layer.self_attn for layer in fresh.layers]
    assert "bellm=causal" in repr(attn[0])
    assert all("bellm=bidirectional" in repr(a) for a in attn[1:])
    assert "bellm=causal" in repr(fresh) and "bellm=bidirectional" in repr(fresh)
    bellm.unpatch(fresh)
    assert repr(fresh) == before


def test_repatch_updates_and_unpatch_restores_exactly(llama, fresh):
    ids, mask = padded_batch(random_sentences(MIXED[0], seed=15), MIXED[1])
    before = hidden(fresh, input_ids=ids, attention_mask=mask).last_hidden_state
    config_before = fresh.config.to_dict()
    flags_before = [layer.self_attn.is_causal for layer in fresh.layers]

    bellm.patch(fresh, from_layer=2)
    bellm.patch(fresh, from_layer=0)
    assert [layer.self_attn.is_causal for layer in fresh.layers] == [False, False, False]
    assert fresh.config.bellm == {"from_layer": 0, "billm_compat": False}
    with torch.no_grad():
        want = eager_reference(llama, 0, ids, mask).last_hidden_state
    assert_real_close(hidden(fresh, input_ids=ids, attention_mask=mask).last_hidden_state, want, mask)

    assert bellm.unpatch(fresh) is fresh
    assert fresh.config._attn_implementation == "eager"
    assert [layer.self_attn.is_causal for layer in fresh.layers] == flags_before
    assert fresh.config.to_dict() == config_before and not hasattr(fresh.config, "bellm")
    assert torch.equal(hidden(fresh, input_ids=ids, attention_mask=mask).last_hidden_state, before)
    with pytest.raises(ValueError, match="not patched"):
        bellm.unpatch(fresh)


def test_save_and_load_round_trip(fresh, tmp_path):
    bellm.patch(fresh, from_layer=-2)
    ids, mask = padded_batch(random_sentences([5, 3], seed=16), "right")
    want = hidden(fresh, input_ids=ids, attention_mask=mask).last_hidden_state
    fresh.save_pretrained(tmp_path)
    assert '"bellm"' in (tmp_path / "config.json").read_text()

    loaded = bellm.load(tmp_path)
    assert loaded.config.bellm == {"from_layer": 1, "billm_compat": False}
    assert loaded.config._attn_implementation == "bellm"
    assert [layer.self_attn.is_causal for layer in loaded.layers] == [True, False, False]
    assert_real_close(hidden(loaded.eval(), input_ids=ids, attention_mask=mask).last_hidden_state, want, mask)

    import transformers

    plain = transformers.AutoModel.from_pretrained(tmp_path)  # records the setting, does not patch
    assert bellm.load(plain) is plain and plain.config._attn_implementation == "bellm"
    with pytest.raises(ValueError, match="no bellm setting"):
        bellm.load(tiny_model("llama", num_layers=2))
    with pytest.raises(FileNotFoundError):
        bellm.load(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [4, -4, 100])
def test_from_layer_out_of_range(fresh, bad):
    with pytest.raises(ValueError, match=r"valid are 0\.\.3 .* -3\.\.-1"):
        bellm.patch(fresh, from_layer=bad)
    assert fresh.config._attn_implementation == "eager"  # nothing changed


@pytest.mark.parametrize("bad", [1.0, "1", True, None])
def test_from_layer_not_an_int(fresh, bad):
    with pytest.raises(TypeError, match=r"from_layer must be an int in \[-3, 3\]"):
        bellm.patch(fresh, from_layer=bad)


def test_not_a_model():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        bellm.patch(torch.nn.Linear(2, 2), from_layer=0)


def test_unsupported_model_raises():
    import transformers

    class ToyAttention(torch.nn.Module):  # does not dispatch through ALL_ATTENTION_FUNCTIONS
        def __init__(self, layer_idx):
            super().__init__()
            self.is_causal, self.layer_idx = True, layer_idx

    class ToyModel(transformers.PreTrainedModel):
        config_class = transformers.LlamaConfig

        def __init__(self, config):
            super().__init__(config)
            self.layers = torch.nn.ModuleList(ToyAttention(i) for i in range(config.num_hidden_layers))

    model = ToyModel(tiny_config("llama", num_layers=2))
    with pytest.raises(NotImplementedError, match="ALL_ATTENTION_FUNCTIONS"):
        bellm.patch(model, from_layer=0)


def test_custom_attention_implementation_refused(fresh):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("someone_elses", AttentionInterface._global_mapping["sdpa"])
    AttentionMaskInterface.register("someone_elses", sdpa_mask)
    fresh.set_attn_implementation("someone_elses")
    with pytest.raises(ValueError, match="'someone_elses'"):
        bellm.patch(fresh, from_layer=1)


def test_dtype_refused():
    model = tiny_model("llama", num_layers=2, dtype=torch.float64)
    with pytest.raises(TypeError, match="torch.float64"):
        bellm.patch(model, from_layer=1)


def test_is_causal_overrides_refused(fresh):
    bellm.patch(fresh, from_layer=1)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="is_causal"):
        fresh(input_ids=ids, is_causal=False)
    bellm.unpatch(fresh)
    fresh.config.is_causal = True
    with pytest.raises(ValueError, match="config.is_causal"):
        bellm.patch(fresh, from_layer=1)


def test_dropout_in_training_refused():
    model = bellm.patch(tiny_model("llama", num_layers=2, attention_dropout=0.1), from_layer=1)
    hidden(model, input_ids=torch.tensor([[5, 6, 7]]))  # eval mode: no dropout, fine
    model.train()
    with pytest.raises(NotImplementedError, match="attention dropout 0.1"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


def test_packed_kwargs_with_batch_refused(fresh):
    bellm.patch(fresh, from_layer=1)
    batch = pack([[5, 6], [7, 8]])
    kw = batch.model_kwargs()
    kw["input_ids"] = torch.cat([kw["input_ids"], kw["input_ids"]])
    kw["position_ids"] = torch.cat([kw["position_ids"], kw["position_ids"]])
    with pytest.raises(ValueError, match="batch size 2"):
        fresh(**kw)


def test_public_functions_are_not_shadowed_by_their_modules(fresh):
    """Importing every submodule must leave ``bellm.patch`` / ``bellm.train`` the functions (lazy exports)."""
    import bellm.surgery  # noqa: F401
    import bellm.trainer  # noqa: F401

    assert bellm.patch is bellm.surgery.patch and bellm.train is bellm.trainer.train
    bellm.patch(fresh, from_layer=2)
    assert fresh.config.bellm["from_layer"] == 2


def test_device_refused():
    model = tiny_model("llama", num_layers=2).to("meta")
    with pytest.raises(ValueError, match="device meta"):
        bellm.patch(model, from_layer=1)


def test_deepcopy_of_patched_model_and_repatch_after_switching_away(llama, fresh):
    bellm.patch(fresh, from_layer=1)
    twin = copy.deepcopy(fresh)
    bellm.patch(twin, from_layer=0)
    assert "bellm=causal" in repr(fresh.layers[0].self_attn)  # the copy's repr follows the copy's flags
    assert "bellm=bidirectional" in repr(twin.layers[0].self_attn)
    fresh.set_attn_implementation("sdpa")  # switched away behind bellm's back: re-patching switches back
    bellm.patch(fresh, from_layer=1)
    assert fresh.config._attn_implementation == "bellm"
    bellm.unpatch(fresh)
    assert fresh.config._attn_implementation == "eager" and repr(fresh) == repr(llama)
    assert [layer.self_attn.is_causal for layer in fresh.layers] == [True] * N_LAYERS
