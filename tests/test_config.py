"""The typed run configuration: flags generated from RunConfig, one validation, --config."""
import argparse
import json
import os

import pytest

from launch.train import parser
from tests.train_util import train_single
from toolkit import config


def parse(*argv):
    return config.parse(parser(), list(map(str, argv)))


def test_every_field_has_a_flag_and_the_defaults_validate():
    cfg = parse()
    assert cfg == config.RunConfig()
    help_text = parser().format_help()
    for name in config.RunConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text, name


def test_flags_fill_the_typed_fields():
    cfg = parse("--lr", "0.5", "--epochs", "3", "--inv-sampling-stride", "auto", "--inv-sync",
                "--resume")
    assert (cfg.lr, cfg.epochs, cfg.inv_sampling_stride, cfg.inv_sync, cfg.resume) == \
        (0.5, 3, "auto", True, "latest")
    assert parse("--inv-sampling-stride", "4").inv_sampling_stride == 4
    assert cfg.layer_options().sampling_stride == "auto"


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--delay", "-1"], "--delay must be an integer >= 0 or auto, got -1"),
    (["--momentum", "nan"], "--momentum must be a finite number >= 0, got nan"),
    (["--inv-stats-every", "0"], "--inv-stats-every must be an integer >= 1, got 0"),
    (["--inv-block", "0"], "--inv-block must be an integer >= 1, got 0"),
    (["--inv-sampling-stride", "0"],
     "--inv-sampling-stride must be an integer >= 1 or 'auto', got 0"),
    (["--inv-stats-budget", "-1"], "--inv-stats-budget must be a finite number > 0"),
])
def test_bad_values_are_one_line_config_errors(argv, message):
    with pytest.raises(config.ConfigError) as info:
        parse(*argv)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_layer_options_are_checked_together_and_only_with_inv():
    with pytest.raises(config.ConfigError, match="--inv-\\* options: .*freeze"):
        parse("--inv-freeze", "--inv-stats-every", "4")
    with pytest.raises(config.ConfigError, match="--inv-stats-every applies only to norm inv"):
        parse("--norm", "bn", "--inv-stats-every", "4")
    assert parse("--norm", "bn").norm == "bn"


def test_resume_keys_include_the_layer_only_with_inv():
    assert "inv_stats_every" in config.RunConfig(norm="inv").resume_keys()
    assert "inv_stats_every" not in config.RunConfig(norm="bn").resume_keys()


def test_config_file_round_trip_and_flags_win(tmp_path):
    saved = dict(config.RunConfig(model="resnet20", lr=0.3, out="runs/a").to_dict(),
                 world_size=2, launcher="mpirun")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    cfg = parse("--config", path, "--lr", "0.7")
    assert (cfg.model, cfg.lr, cfg.out) == ("resnet20", 0.7, None)


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot be read as JSON"),
    ('{"lr": 0.1, "colour": "red"}', "unknown option(s) colour"),
    ('{"lr": -1}', "--lr must be a finite number > 0"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse("--config", path)


def test_cli_bad_value_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = train_single("--lr", "inf", "--out", out, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --lr must be a finite number > 0, got inf"
    assert not out.exists()


def test_saved_config_reruns_the_same_options(tmp_path):
    """config.json of a finished run, given back with --config, trains the same run."""
    first = tmp_path / "first"
    proc = train_single("--norm", "bn", "--strategy", "none", "--max-steps", "3", "--epochs",
                        "1", "--lr", "0.05", "--out", first)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((first / "config.json").read_text())
    assert saved["lr"] == 0.05 and saved["world_size"] == 1
    second = tmp_path / "second"
    proc = train_single("--config", first / "config.json", "--out", second)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((second / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "out"} == \
        {k: v for k, v in saved.items() if k != "out"}
    assert os.path.exists(second / "summary.json")


def test_resume_refuses_other_layer_options(tmp_path):
    """--inv-* options are recorded in the summary and the checkpoint; resuming with another
    value is one line and exit 2."""
    import torch
    out = tmp_path / "run"
    proc = train_single("--max-steps", "2", "--epochs", "1", "--inv-stats-every", "2",
                        "--inv-sampling-stride", "auto", "--out", out)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "summary.json").read_text())
    assert saved["inv_stats_every"] == 2 and saved["inv_sampling_stride"] == "auto"
    state = torch.load(next((out / "checkpoints").glob("ckpt-*.pt")), weights_only=True)
    assert state["config"]["inv_stats_every"] == 2
    proc = train_single("--max-steps", "3", "--epochs", "1", "--inv-stats-every", "3",
                        "--inv-sampling-stride", "auto", "--out", out, "--resume")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("inv_stats_every=2 there, 3 here")
    assert len(proc.stderr.strip().splitlines()) == 1


# ---- the other command lines take the training options as launch.train does ----------------

# Flags spelled like a training flag that mean something else on that command line.
OWN_MEANING = {
    "launch.bench_layer": {"--device"},  # cpu or cuda, no auto
    "launch.bench_comm": {"--device"},
    "experiments.bench.comm": {"--device", "--out"},  # --out: the JSON rank 0 writes
    "launch.bench_nodes": {"--workers"},  # node counts
    "launch.bench_data": {"--workers", "--data-dir"},  # worker counts; an ImageFolder tree
    "launch.scaling sweep": {"--workers", "--out", "--batch-size"},  # strong: largest job's
    "launch.scaling project": {"--workers", "--out"},
    "launch.study": {"--out"},
    "launch.plot": {"--out"},  # the image
}


def _command_lines():
    """name -> (parser, the RunConfig options it declares with config.add_run_options)."""
    from experiments.bench import comm
    from launch import bench_comm, bench_data, bench_layer, bench_nodes, plot, scaling, study

    def sub(p, command):
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[command]

    return {"launch.bench_layer": (bench_layer.parser(), bench_layer.RUN_OPTIONS),
            "launch.bench_comm": (bench_comm.parser(), bench_comm.RUN_OPTIONS),
            "experiments.bench.comm": (comm.worker_parser(), comm.WORKER_RUN_OPTIONS),
            "launch.bench_nodes": (bench_nodes.parser(), bench_nodes.RUN_OPTIONS),
            "launch.bench_data": (bench_data.parser(), bench_data.RUN_OPTIONS),
            "launch.scaling sweep": (sub(scaling.parser(), "sweep"), ()),
            "launch.scaling project": (sub(scaling.parser(), "project"),
                                       scaling.PROJECT_RUN_OPTIONS),
            "launch.study": (study.parser(), study.RUN_OPTIONS),
            "launch.plot": (plot.parser(), ())}


@pytest.mark.parametrize("name", sorted(OWN_MEANING))
def test_every_command_line_takes_the_training_options_as_launch_train(name):
    """An option of another command line spelled like a training option is the training
    option (same dest, type, choices, help, flag), unless listed above as meaning
    something else there."""
    train = parser()._actions
    by_flag = {flag: a for a in train for flag in a.option_strings if a.dest != "help"}
    by_dest = {a.dest: a for a in train}
    p, shared = _command_lines()[name]
    assert set(shared) <= {a.dest for a in p._actions}
    for action in p._actions:
        if action.dest in shared:
            mine = by_dest[action.dest]
            assert (action.type, action.choices) == (mine.type, mine.choices), action.dest
            assert action.help.startswith(mine.help), action.dest
            assert mine.option_strings[0] in action.option_strings, action.dest
        else:
            clash = set(action.option_strings) & set(by_flag)
            assert clash <= OWN_MEANING[name], (action.dest, clash)


def test_shared_options_parse_and_check_as_in_training(tmp_path, capsys):
    from experiments.bench.comm import parse_worker_args
    from launch import bench_comm, bench_layer, bench_nodes, scaling
    for module in (bench_comm, bench_nodes):
        assert module.parser().parse_args(["--json", "x", "--delay", "auto"]).delay == "auto"
        assert module.parser().parse_args(["--json", "x", "--delay", "3"]).delay == 3
    assert parse_worker_args(["--out", "x", "--delay", "auto"]).delay == "auto"
    assert scaling.parser().parse_args(["project", "--delay", "2"]).delay == 2
    args = bench_layer.parse_args(["--batch-size", "4", "--model", "small_cnn"])
    assert (args.batch_size, args.model) == (4, "small_cnn")
    assert bench_layer.parse_args(["--batch", "8"]).batch_size == 8  # its documented spelling
    # the checks are launch.train's: one line, exit 2, before any work
    for main, argv, message in (
            (bench_nodes.main, ["--json", str(tmp_path / "n.json"), "--delay", "-1"],
             "--delay must be an integer >= 0 or auto, got -1"),
            (bench_layer.main, ["--batch", "0"], "--batch-size must be an integer >= 1, got 0"),
            (bench_layer.main, ["--model", "resnet19"],
             "--model must be one of small_cnn, resnet18_cifar")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not os.listdir(tmp_path)
