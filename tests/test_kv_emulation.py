"""tests/gpu/kv_emulation.py, the CPU emulation of exllamav2's quantized KV cache that tests/gpu's thresholds
come from: its Qwen2 is transformers' Qwen2, its chunked teacher forcing is the one-pass forward, and its
quantizer behaves as the kernel's arithmetic says."""
import pytest
import torch

from gpu.kv_emulation import Qwen2, compare, hadamard32, quant_dequant


def test_hadamard_twice_is_32_times_the_input():
    x = torch.randn(3, 32, 2, dtype=torch.float64)
    assert torch.allclose(hadamard32(hadamard32(x)), 32 * x)
    e = torch.zeros(32, 1, dtype=torch.float64)
    e[0] = 1
    assert torch.equal(hadamard32(e), torch.ones(32, 1, dtype=torch.float64))  # lane 0 spreads to every lane


@pytest.mark.parametrize("bits, worst", [(8, 0.01), (4, 0.15)])
def test_quantizer_error_is_the_bit_width_s(bits, worst):
    x = torch.randn(50, 2, 128)
    err = (quant_dequant(x, bits) - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    assert 0 < err < worst
    spike = torch.zeros(1, 1, 128)
    spike[..., 5] = 100.0  # an outlier: the Hadamard spreads it as +-100 over 32 lanes; +100 hits the clamp
    got = quant_dequant(spike, bits)  # (q 15 of 0..15: 7/8 of the scale), which the inverse transform halves
    assert 0 < (got - spike).abs().max() <= 1.2 * 100.0 / 2 ** bits  # 1.2: fp16 sums of up to 32 x 100
    assert got[..., 64:].abs().max() == 0  # the all-zero blocks stay zero


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32).eval()
    return Qwen2(tiny_qwen_dir), ref


def test_the_emulated_model_is_transformers_qwen2(tiny):
    model, ref = tiny
    ids = list(range(5, 45))
    with torch.inference_mode():
        want = ref(torch.tensor([ids])).logits[0]
    got = model.forward(ids, model.empty_cache(), None)
    assert (got - want).abs().max() < 2e-3 * want.abs().max()  # K/V rounded to fp16 as exllamav2 stores them
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    rows = model.teacher_forced(ids, 30, None, chunk=16)  # prefill 29 in chunks of 16, then 10 single steps
    assert rows.shape[0] == 10 and torch.allclose(rows, got[29:39], atol=1e-4)


def test_a_quantized_cache_changes_the_logits_a_little(tiny):
    model, _ = tiny
    ids = list(range(100, 180))
    exact = model.teacher_forced(ids, 60, None)
    q8, q4 = (compare(model.teacher_forced(ids, 60, bits), exact, 2766) for bits in ((8, 8), (4, 4)))
    assert 0.999 < q8["cosine_min"] < 1 and 0.98 < q4["cosine_min"] < q8["cosine_min"]
