"""DaSGD's fragments, low-precision averages and pinned automatic delay, and
synchronize_model() with uneven optimizer state, in one real 3-rank job
(tests/workers/dasgd_streams.py)."""
import os

import pytest
import torch

from tests.mpi_util import py, run_ranks
from toolkit.strategies.fragments import fragment_offsets, split_pieces
from toolkit.strategies.low_precision import UNIT_ROUNDOFF

pytestmark = pytest.mark.mpi
NP = 3


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dasgd_streams")
    run_ranks(NP, py("dasgd_streams.py", out), timeout=300)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(NP)]


def _indices(ranges):
    return torch.cat([torch.arange(a, b) for a, b in ranges])


def _replay(ranks, label):
    """The delayed merge rule per fragment, in float64, on all ranks at once."""
    runs = [r["fragments"][label] for r in ranks]
    first = runs[0]
    lr, period, delay = first["lr"], first["period"], first["delay"]
    fragments = [_indices(r) for r in first["ranges"]]
    w = [run["trajectory"][0].double() for run in runs]
    targets = [run["target"].double() for run in runs]
    in_flight, launches, states = [], [], [list(w)]
    for t in range(1, len(first["trajectory"])):
        w = [wi - lr * (wi - c) for wi, c in zip(w, targets)]
        due = [r for r in in_flight if r[0] <= t]
        in_flight = [r for r in in_flight if r[0] > t]
        for _, idx, snaps in due:
            mean = sum(snaps) / len(snaps)
            for i in range(len(w)):
                w[i] = w[i].clone()
                w[i][idx] += mean - snaps[i]
        for f, offset in enumerate(first["offsets"]):
            if t - offset > 0 and (t - offset) % period == 0:
                launches.append((t, f))
                idx = fragments[f]
                rnd = (t + delay, idx, [wi[idx].clone() for wi in w])
                if delay == 0:
                    mean = sum(rnd[2]) / len(w)
                    for i in range(len(w)):
                        w[i] = w[i].clone()
                        w[i][idx] = mean
                else:
                    in_flight.append(rnd)
        states.append(list(w))
    return states, launches


@pytest.mark.parametrize("label", ["f3_h3_d2", "f4_h2_d1", "f2_h1_d0", "f1_h2_d2"])
def test_fragments_follow_the_delayed_merge_rule(ranks, label):
    first = ranks[0]["fragments"][label]
    total = first["trajectory"].shape[1]
    # The fragments partition the model: every element in exactly one, sizes within one
    # element of each other (all float32 here, so equal bytes = equal elements).
    covered = torch.sort(torch.cat([_indices(r) for r in first["ranges"]])).values
    assert torch.equal(covered, torch.arange(total))
    sizes = [sum(b - a for a, b in r) for r in first["ranges"]]
    assert max(sizes) - min(sizes) <= 1, sizes
    states, launches = _replay(ranks, label)
    # Every fragment is launched exactly once per period, at its own offset.
    assert first["launches"] == launches
    period = first["period"]
    for f in range(len(first["ranges"])):
        steps = [t for t, g in launches if g == f]
        assert all(b - a == period for a, b in zip(steps, steps[1:])), (f, steps)
    for rank, r in enumerate(ranks):
        got = r["fragments"][label]["trajectory"].double()
        for t, state in enumerate(states):
            torch.testing.assert_close(got[t], state[rank], rtol=0, atol=2e-6,
                                       msg=f"{label}: rank {rank}, step {t}")


def test_fragment_split_is_by_bytes():
    tensors = [torch.zeros(10, dtype=torch.float64), torch.zeros(20, dtype=torch.float32)]
    pieces = split_pieces(tensors, 2)  # 160 bytes: 80 + 80
    assert pieces == [[(0, 0, 10)], [(1, 0, 20)]]
    pieces = split_pieces([torch.zeros(7)], 3)
    assert [sum(b - a for _, a, b in p) for p in pieces] == [3, 2, 2]
    assert fragment_offsets(4, 8) == [0, 2, 4, 6] and fragment_offsets(3, 1) == [0, 0, 0]


def test_fragments_1_fp32_and_pinned_auto_are_the_plain_method_bit_for_bit(ranks):
    for r in ranks:
        for config, runs in r["equivalent"].items():
            plain = runs["plain"]["state"]
            for label in ("fragments1", "fp32", "auto_pinned"):
                assert torch.equal(runs[label]["state"], plain), (config, label)
            assert runs["auto_pinned"]["decisions"] == 1  # it did measure and broadcast


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_merge_error_is_bounded_as_documented(ranks, dtype):
    """Per element, after one merge: |w_low - w_fp32| <= (n+1) u D + (n+2) 2^-24 W, with D
    the largest |s_j - r| (distance moved since the reference) and W the largest |w|."""
    u = UNIT_ROUNDOFF[dtype]
    runs = [r["low_precision"] for r in ranks]
    reference = runs[0]["fp32"]["reference"]
    assert all(torch.equal(r[dtype]["reference"], reference) for r in runs)
    distance = max((r[dtype]["snapshot"] - reference).abs().max() for r in runs)
    largest = max(r["fp32"]["after_merge"].abs().max() for r in runs)
    bound = (NP + 1) * u * distance + (NP + 2) * 2 ** -24 * largest
    for r in runs:
        # identical states before the merge: the difference is the merge's alone
        assert torch.equal(r[dtype]["before_merge_step"], r["fp32"]["before_merge_step"])
        error = (r[dtype]["after_merge"] - r["fp32"]["after_merge"]).abs().max()
        assert 0 < error <= bound, (dtype, float(error), float(bound))
    # The merge moves the mean over ranks only by the rounding of the low-precision sum.
    mean_lp = sum(r[dtype]["after_merge"] for r in runs) / NP
    mean_fp = sum(r["fp32"]["after_merge"] for r in runs) / NP
    assert (mean_lp - mean_fp).abs().max() <= (NP - 1) * u * distance + \
        (NP + 2) * 2 ** -24 * largest
    # Over 6 rounds the error stays of the same order (rounding residuals are sent on).
    drift = max((r[dtype]["after_12"] - r["fp32"]["after_12"]).abs().max() for r in runs)
    moved = max((r["fp32"]["after_12"] - reference).abs().max() for r in runs)
    assert drift <= 4 * (NP + 1) * u * moved, (float(drift), float(moved))


@pytest.mark.parametrize("label", ["none", "sync", "local", "dasgd", "dasgd_opt_state",
                                   "dasgd_bf16_f2"])
def test_synchronize_model_with_optimizer_state_on_some_ranks_only(ranks, label):
    runs = [r["uneven"][label] for r in ranks]
    if label in ("none", "local", "dasgd", "dasgd_bf16_f2"):
        # the situation of the bug: only rank 0 has the branch's momentum
        assert all(m is not None for m in runs[0]["branch_momentum_before"])
        assert all(m is None for r in runs[1:] for m in r["branch_momentum_before"])
        assert runs[0]["states_before"] > runs[1]["states_before"]
    for r in runs[1:]:
        assert torch.equal(r["state"], runs[0]["state"]), label
    assert torch.isfinite(runs[0]["state"]).all()
