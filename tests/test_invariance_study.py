"""The stats_every study: one real (short) training run, and the verdict drawn from runs."""
import torch

from experiments.studies import stats_every as study


def test_one_short_run_trains_and_scores_on_val_and_test():
    torch.set_num_threads(1)
    splits = study.digits_splits()
    train, val, test = splits
    assert len(train[1]) + len(val[1]) == 1438 and len(test[1]) == 359
    row = study.train_run("small_cnn", 4, 0.1, 0, 1, splits)
    assert len(row["val_curve"]) == len(row["test_curve"]) == 1 and not row["diverged"]
    assert row["final_val"] > 0.5 and row["final_test"] > 0.5


def _rows(model, lr, k, accs):
    return [{"model": model, "lr": lr, "stats_every": k, "seed": s, "final_val": a,
             "final_test": a, "epoch_val_target": 3, "diverged": False, "epochs": 10}
            for s, a in enumerate(accs)]


def test_largest_k_within_half_a_point_with_every_smaller_k_holding():
    rows = (_rows("m", 0.1, 1, [0.98, 0.98]) + _rows("m", 0.1, 4, [0.978, 0.978]) +
            _rows("m", 0.1, 10, [0.97, 0.97]) + _rows("m", 0.1, 50, [0.98, 0.98]))
    summary = study.summarise(rows)
    assert study.largest_k_that_holds(summary) == {"m @ lr 0.1": 4}
    k10 = next(s for s in summary if s["stats_every"] == 10)
    assert abs(k10["val_loss_points"] - 1.0) < 1e-9
    assert "| m | 0.1 | 10 |" in study.table(summary, {"m @ lr 0.1": 4}, {"m": 3})


def test_runs_train_through_launch_train_step_schedule_and_optimizer(monkeypatch):
    """The study steps its runs with launch.train's own functions and configuration."""
    import toolkit.schedule
    import toolkit.train
    torch.set_num_threads(1)
    calls = {"train_step": 0, "lr_at": []}
    real_step, real_lr = toolkit.train.train_step, toolkit.schedule.lr_at

    def counting_step(*args, **kwargs):
        calls["train_step"] += 1
        return real_step(*args, **kwargs)

    def recording_lr(step, **kwargs):
        calls["lr_at"].append(kwargs)
        return real_lr(step, **kwargs)

    monkeypatch.setattr(toolkit.train, "train_step", counting_step)
    monkeypatch.setattr(toolkit.schedule, "lr_at", recording_lr)
    x, y = study.digits_splits()[0]
    splits = ((x[:320], y[:320]), (x[320:400], y[320:400]), (x[400:480], y[400:480]))
    row = study.train_run("small_cnn", 1, 0.1, 0, 2, splits)
    assert calls["train_step"] == 2 * 320 // 32 and len(row["val_curve"]) == 2
    cfg = study.run_config("small_cnn", 1, 0.1, 0, 2)
    assert calls["lr_at"][0] == {"peak_lr": 0.1, "total_steps": 20, "warmup_steps": 0,
                                 "schedule": cfg.schedule, "start_lr": 0.1}
