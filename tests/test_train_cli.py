"""launch.train end to end on real ranks: every launcher, metrics, summary, bit-exact resume."""
import os

import pytest
import torch

from tests.train_util import final_line, records, summary, train_ranks

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("np_, launcher", [(2, "mpirun"), (3, "mpirun"), (2, "horovodrun"),
                                           (2, "horovodrun-gloo")])
def test_training_runs_under_every_launcher_and_loss_goes_down(tmp_path, np_, launcher):
    out = tmp_path / "run"
    proc = train_ranks(np_, "--norm", "bn", "--strategy", "sync", "--epochs", "2",
                       "--out", out, launcher=launcher)
    line = final_line(proc)
    assert f"metrics={out}/metrics.jsonl" in line and "checkpoint=" in line
    s = summary(out)
    assert s["world_size"] == np_ and s["steps"] == 2 * (1438 // (32 * np_))
    assert s["device"] == "cpu" or torch.cuda.is_available()  # --device auto
    assert s["test_acc"] > 0.5 and f"test_acc={s['test_acc']:.3f}" in line
    losses = [r["loss"] for r in records(out, "interval")]
    assert losses[-1] < 0.7 * losses[0], losses
    epochs = records(out, "epoch")
    assert len(epochs) == 2
    assert os.path.isfile(s["checkpoint"])
    # throughput and communication wait per interval and per epoch (not running totals)
    assert all(r["images_per_s"] > 0 and r["comm_wait_s"] >= 0
               for r in records(out, "interval") + epochs)
    assert sum(r["comm_wait_s"] for r in epochs) == pytest.approx(s["comm_wait_s"], rel=1e-6,
                                                                  abs=1e-9)


def _final_params(out):
    state = torch.load(summary(out)["checkpoint"], weights_only=True)
    return state["model"], state["strategy"]


@pytest.mark.parametrize("strategy", ["sync", "dasgd"])
def test_four_epochs_equal_two_plus_resume_plus_two(tmp_path, strategy):
    args = ["--norm", "bn", "--strategy", strategy, "--epochs", "4", "--checkpoint-interval",
            "7"]
    straight, sliced = tmp_path / "straight", tmp_path / "sliced"
    train_ranks(2, *args, "--out", straight)
    first = train_ranks(2, *args, "--out", sliced, "--stop-after-epochs", "2")
    assert "stopped by --stop-after-epochs 2" in first.stdout
    train_ranks(2, *args, "--out", sliced, "--resume")
    (model_a, strat_a), (model_b, strat_b) = _final_params(straight), _final_params(sliced)
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    assert summary(straight)["test_acc"] == summary(sliced)["test_acc"]


def test_the_main_job_defaults_train_inv_with_dasgd_to_90_percent(tmp_path):
    """`make run`'s configuration (small CNN, invariance layer, DaSGD, 2 ranks via
    horovodrun), shortened to 4 epochs."""
    out = tmp_path / "main"
    proc = train_ranks(2, "--epochs", "4", "--out", out, launcher="horovodrun")
    s = summary(out)
    assert (s["model"], s["norm"], s["strategy"], s["world_size"]) == \
        ("small_cnn", "inv", "dasgd", 2)
    line = final_line(proc)  # one unbroken summary line, although horovodrun tags chunks
    assert s["test_acc"] >= 0.9, line
    assert f"test_acc={s['test_acc']:.3f}" in line
