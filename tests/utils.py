"""Test helpers."""
import torch


def assert_verbose_allclose(actual, expected, rtol=1e-5, atol=1e-8, max_print=5, name="tensor"):
    """torch.testing.assert_close, plus the indices and values of the worst mismatches."""
    actual = actual.detach()
    expected = expected.detach().to(actual.dtype)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        err = (actual - expected).abs()
        idx = torch.nonzero(bad)[:max_print]
        lines = [f"  at {tuple(i.tolist())}: got {actual[tuple(i)].item():.8g}, expected {expected[tuple(i)].item():.8g}"
                 for i in idx]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (max abs err "
                             f"{err.max().item():.3g}, rtol={rtol}, atol={atol})\n" + "\n".join(lines))


def stacked_weights(cell, in_channels, hidden, dtype=torch.float64, bias=True, scale=0.5, requires_grad=True):
    """Random weights stacked per direction: (w_ih, w_hh, b_ih, b_hh)."""
    from brnnseg_kernels.cells import spec

    g = spec(cell).gates * hidden
    ws = [torch.randn(2, g, in_channels, dtype=dtype) * scale, torch.randn(2, g, hidden, dtype=dtype) * scale]
    if bias:
        ws += [torch.randn(2, g, dtype=dtype) * scale, torch.randn(2, g, dtype=dtype) * scale]
    else:
        ws += [None, None]
    return [None if w is None else w.requires_grad_(requires_grad) for w in ws]
