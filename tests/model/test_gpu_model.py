"""GPU-only model-level checks (``gpu`` marker): a patched model on CUDA, running bellm's Triton kernels, against
the same weights on the CPU (bellm's CPU path, float32, itself tested against HF's padded batches): Encoder
embeddings in float32 and bfloat16, every row, and the loss and gradients of one packed AnglE training step.

The model has head_dim 64 (hidden 256, 4 query heads, 2 KV heads) and is bidirectional from layer 1 of 3, so
causal and bidirectional layers both run. Collected everywhere, run only with CUDA.
"""

import copy

import pytest
import torch
from _encode_helpers import SENTENCES, char_tokenizer
from tiny_models import tiny_model

from bellm.encoder import BELLM_PROMPT, Encoder

pytestmark = pytest.mark.gpu


def _model():
    return tiny_model("llama", attn_implementation="sdpa", hidden=256, heads=4, kv_heads=2, num_layers=3)


def _rel(a, b) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm()).item()


# bf16: the weights' own rounding moves these embeddings by about 1 % (measured with bf16 on the CPU path);
# making layers >= 1 bidirectional moves them by about 20 %, so a GPU run that lost the bidirectional layers,
# or computed attention wrongly, fails.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_gpu_encoder_matches_cpu(pooling, dtype, tol):
    tok = char_tokenizer()
    model = _model()
    kw = dict(pooling=pooling, prompt=BELLM_PROMPT)
    want = Encoder(copy.deepcopy(model), tok, from_layer=1, **kw).encode(SENTENCES, convert_to_tensor=True)
    causal = Encoder(copy.deepcopy(model), tok, **kw).encode(SENTENCES, convert_to_tensor=True)
    assert min(_rel(causal[i], want[i]) for i in range(len(SENTENCES))) > 3 * tol  # guards the guard

    enc = Encoder(copy.deepcopy(model).to("cuda", dtype), tok, from_layer=1, **kw)
    got = enc.encode(SENTENCES, convert_to_tensor=True)
    assert got.is_cuda and torch.isfinite(got).all()
    for i, text in enumerate(SENTENCES):
        assert _rel(got[i], want[i]) <= tol, f"sentence {i} {text!r}: {_rel(got[i], want[i]):.3g} > {tol}"
    alone = enc.encode(SENTENCES[2:3], convert_to_tensor=True)  # packed with others or alone: the same
    assert _rel(alone[0], want[2]) <= tol


def test_gpu_packed_training_step_matches_cpu():
    """Loss and every parameter's gradient of one packed AnglE step (float32) on CUDA equal the CPU's."""
    from bellm.losses import AnglELoss
    from bellm.surgery import patch
    from bellm.trainer import batch_loss

    g = torch.Generator().manual_seed(0)
    columns = [
        [torch.randint(4, 128, (int(n),), generator=g).tolist() for n in torch.randint(3, 40, (4,), generator=g)]
        for _ in range(3)
    ]
    results = {}
    for device in ("cpu", "cuda"):
        model = patch(_model().to(device), from_layer=1).train()
        loss, _ = batch_loss(model, AnglELoss(), columns, None, torch.device(device))
        loss.backward()
        results[device] = (loss.detach().cpu(), {n: p.grad for n, p in model.named_parameters()})
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = results["cpu"], results["cuda"]
    assert torch.isfinite(loss_gpu) and abs(loss_gpu.item() - loss_cpu.item()) <= 1e-4 * max(1.0, abs(loss_cpu.item()))
    for name, grad in grads_cpu.items():
        assert grads_gpu[name] is not None and grad is not None, name
        assert _rel(grads_gpu[name], grad) <= 1e-3, f"{name}: {_rel(grads_gpu[name], grad):.3g}"
