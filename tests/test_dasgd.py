"""DaSGD and its baselines in real multi-rank Horovod jobs (mpirun and horovodrun --gloo).

Each job runs tests/workers/dasgd_props.py: every rank saves its states and this process
compares them across ranks and against hand-written references.
"""
import os

import pytest
import torch

from tests.mpi_util import py, run_ranks

pytestmark = pytest.mark.mpi


def _job(tmp_path_factory, np, launcher="mpirun", env=None):
    out = tmp_path_factory.mktemp(f"dasgd_np{np}_{launcher}")
    # TOOLKIT_COMM_NICE: also check that init_horovod() renices Horovod's threads.
    run_ranks(np, py("dasgd_props.py", out), launcher=launcher, timeout=240,
              env={"TOOLKIT_COMM_NICE": "19", **(env or {})})
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(np)]
    assert all(r["size"] == np for r in ranks)
    return ranks


# np2-device: gradients from the step benchmarks' device-time surrogate (a sleeping
# backward that hands each layer its gradients through autograd, firing sync's hooks).
@pytest.fixture(scope="module", params=[(2, "mpirun", None), (3, "mpirun", None),
                                        (2, "horovodrun-gloo", None),
                                        (2, "mpirun", {"DEVICE_TIME_MS": "2"})],
                ids=["np2-mpirun", "np3-mpirun", "np2-gloo", "np2-device"])
def ranks(request, tmp_path_factory):
    np, launcher, env = request.param
    return _job(tmp_path_factory, np, launcher, env)


def test_merge_keeps_mean_and_shrinks_spread(ranks):
    before = torch.stack([r["merge"]["before"] for r in ranks])
    after = torch.stack([r["merge"]["after"] for r in ranks])
    torch.testing.assert_close(after.mean(0), before.mean(0), rtol=0, atol=1e-6)
    spread_before = (before - before.mean(0)).norm()
    spread_after = (after - after.mean(0)).norm()
    # The ranks start 0.5-sigma apart; only the 2 local steps made in flight stay apart.
    assert spread_after < 0.2 * spread_before, (spread_before, spread_after)
    assert not torch.equal(after[0], after[1]), "local updates in flight must be kept"


@pytest.mark.parametrize("case", ["local", "dasgd_d0"])
def test_zero_delay_is_periodic_model_averaging(ranks, case):
    for r in ranks:
        torch.testing.assert_close(r[case]["strategy"], r[case]["reference"],
                                   rtol=1e-6, atol=1e-7)


def test_h1_d0_plain_sgd_equals_horovod_sync(ranks):
    for r in ranks:
        # Same iterates up to float rounding: avg(w - lr g_i) vs w - lr avg(g_i).
        torch.testing.assert_close(r["sync_eq"]["dasgd"], r["sync_eq"]["sync"],
                                   rtol=0, atol=1e-6)
    for r in ranks[1:]:
        assert torch.equal(r["sync_eq"]["dasgd"], ranks[0]["sync_eq"]["dasgd"])


def test_fused_merge_and_relaunch_equals_separate_passes(ranks):
    """When d is a multiple of H the merge writes the next round's snapshot and send buffer
    in the same pass; the trajectory is bit for bit that of separate passes."""
    for rank in ranks:
        for label, (fused, separate) in rank["fused_relaunch"].items():
            assert fused["fused_merges"] > 0 and separate["fused_merges"] == 0, label
            assert torch.equal(fused["params"], separate["params"]), label


def test_whole_uneven_epochs_then_identical_state_on_every_rank(ranks):
    np = len(ranks)
    expected_steps = 3 * (53 // (4 * np))
    for label, first in ranks[0]["epochs"].items():
        assert first["steps"] == expected_steps, label
        for r in ranks[1:]:
            for epoch, state in enumerate(r["epochs"][label]["states"]):
                # synchronize_model(): parameters, BN statistics and momentum all equal.
                assert torch.equal(state, first["states"][epoch]), (label, epoch)
        assert all(torch.isfinite(s).all() for s in first["states"]), label


def test_one_rank_is_single_process_training(tmp_path_factory):
    (rank,) = _job(tmp_path_factory, 1)
    assert torch.equal(rank["single"]["strategy"], rank["single"]["reference"])


def test_horovod_threads_run_at_low_priority(ranks):
    for r in ranks:
        nice = r["thread_nice"]
        assert nice[r["main_tid"]] == 0  # compute keeps its priority
        assert any(v == 19 for v in nice.values())  # Horovod's/MPI's threads do not
