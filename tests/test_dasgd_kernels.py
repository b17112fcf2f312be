"""torch.ops.dasgd.*: the single-pass merge and snapshot kernels against the torch ops they
replace, opcheck, and the FlatBuffer paths (kernel and torch fallback) agreeing."""
import pytest
import torch

import toolkit._C  # noqa: F401  (registers torch.ops.dasgd)
from toolkit.strategies import flat as flat_module
from toolkit.strategies.flat import FlatBuffer


def model_like(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 3, 3, 3), (7,), (1,), (5, 7), (0,), (300, 301)]  # includes empty and large
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def reference_merge(model, sum_flat, snap_flat, ranks):
    """The formula in plain torch: w + (sum - n s) / n, tensor by tensor."""
    out, offset = [], 0
    for t in model:
        n = t.numel()
        s = sum_flat[offset:offset + n].view_as(t).double()
        q = snap_flat[offset:offset + n].view_as(t).double()
        out.append((t.double() + (s - ranks * q) / ranks).to(t.dtype))
        offset += n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("relaunch", [False, True])
def test_merge_equals_the_formula(dtype, ranks, relaunch):
    model = model_like(dtype)
    total = sum(t.numel() for t in model)
    gen = torch.Generator().manual_seed(1)
    snap = torch.randn(total, generator=gen).to(dtype)
    send = (ranks * snap.double() + 0.01 * torch.randn(total, generator=gen, dtype=torch.float64)
            ).to(dtype)
    expected = reference_merge(model, send, snap, ranks)
    torch.ops.dasgd.merge_(model, send, snap, ranks, relaunch)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2,
           torch.float16: 2e-3}[dtype]
    for got, want in zip(model, expected):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if relaunch:  # the next round's send buffer and snapshot hold the merged model
        flat = torch.cat([t.reshape(-1) for t in model])
        assert torch.equal(send, flat) and torch.equal(snap, flat)


def test_one_rank_merge_is_exactly_the_identity():
    model = model_like(torch.float32)
    before = [t.clone() for t in model]
    snap = torch.cat([t.reshape(-1) for t in model])
    torch.ops.dasgd.merge_(model, snap.clone(), snap, 1, False)
    assert all(torch.equal(a, b) for a, b in zip(model, before))


def test_snapshot_copies_the_model_into_both_buffers():
    model = model_like(torch.float32)
    total = sum(t.numel() for t in model)
    send, snap = torch.empty(total), torch.empty(total)
    torch.ops.dasgd.snapshot_(model, send, snap)
    flat = torch.cat([t.reshape(-1) for t in model])
    assert torch.equal(send, flat) and torch.equal(snap, flat)


def test_opcheck():
    model = model_like(torch.float64)[:4]
    total = sum(t.numel() for t in model)
    torch.library.opcheck(torch.ops.dasgd.merge_,
                          (model, torch.randn(total, dtype=torch.float64),
                           torch.randn(total, dtype=torch.float64), 2, True))
    torch.library.opcheck(torch.ops.dasgd.snapshot_,
                          (model, torch.empty(total, dtype=torch.float64),
                           torch.empty(total, dtype=torch.float64)))


@pytest.mark.parametrize("bad, message", [
    ("size", "buffers hold"), ("dtype", "dtype"), ("ranks", "ranks must be"),
    ("strided", "contiguous")])
def test_bad_layouts_are_refused(bad, message):
    model = model_like(torch.float32)
    total = sum(t.numel() for t in model)
    send, snap, ranks = torch.zeros(total), torch.zeros(total), 2
    if bad == "size":
        send, snap = torch.zeros(total + 1), torch.zeros(total + 1)
    elif bad == "dtype":
        send, snap = send.double(), snap.double()
    elif bad == "ranks":
        ranks = 0
    else:
        model[5] = model[5].t()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dasgd.merge_(model, send, snap, ranks, False)


@pytest.mark.parametrize("relaunch", [False, True])
def test_flat_buffer_kernel_and_torch_paths_agree(monkeypatch, relaunch):
    """Mixed dtypes (a float64 'buffer' among float32 parameters), both code paths."""
    results = []
    for kernels in (True, False):
        monkeypatch.setattr(flat_module, "_HAS_KERNELS", kernels)
        model = model_like(torch.float32) + [torch.arange(4, dtype=torch.float64)]
        send, snap = FlatBuffer(model), FlatBuffer(model)
        send.load_twice(model, snap)
        assert all(torch.equal(v, t) for v, t in zip(snap.views, model))
        for flat in send.tensors:  # pretend 2 ranks sent slightly different snapshots
            flat.mul_(2).add_(0.125)
        with torch.no_grad():
            for t in model:
                t.add_(0.5)  # local updates made while the average travelled
        send.merge_into(model, snap, 2, relaunch=relaunch)
        if relaunch:
            assert all(torch.equal(v, t) for v, t in zip(send.views, model))
            assert all(torch.equal(v, t) for v, t in zip(snap.views, model))
        results.append(model)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # ā - s = 0.0625 everywhere, plus the 0.5 local update
    torch.testing.assert_close(results[0][0], model_like(torch.float32)[0] + 0.5625)
