"""The shared input checks: cu_seqlens validation is cached per tensor version, inference tensors included."""

import pytest
import torch

from bellm_kernels import _checks


def test_cu_seqlens_checked_once_per_version_and_rechecked_after_a_write():
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    _checks.check_cu_seqlens(cu, 7, 4)
    assert cu._bellm_checked == (cu._version, 7, 4)
    cu[1] = 9  # in-place write bumps the version: the next call must validate again and fail
    with pytest.raises(ValueError, match="non-decreasing"):
        _checks.check_cu_seqlens(cu, 7, 4)


def test_cu_seqlens_inference_tensor_is_validated():
    with torch.inference_mode():
        good = torch.tensor([0, 3, 7], dtype=torch.int32)
        _checks.check_cu_seqlens(good, 7, 4)
        _checks.check_cu_seqlens(good, 7, 4)  # cached: no version counter needed
        bad = torch.tensor([0, 3, 6], dtype=torch.int32)
        with pytest.raises(ValueError, match="last entry must equal total_tokens"):
            _checks.check_cu_seqlens(bad, 7, 4)
        with pytest.raises(ValueError, match="max_seqlen = 3"):
            _checks.check_cu_seqlens(good, 7, 3)


def test_attention_runs_on_inference_tensors():
    import bellm_kernels

    with torch.inference_mode():
        cu = torch.tensor([0, 3, 7], dtype=torch.int32)
        q, k = torch.randn(7, 4, 16), torch.randn(7, 2, 16)
        out = bellm_kernels.attention(q, k, k, causal=True, cu_seqlens=cu, max_seqlen=4)
        ref = bellm_kernels.reference.attention(q, k, k, causal=True, cu_seqlens=cu, max_seqlen=4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
