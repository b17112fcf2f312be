"""The command line of the run configuration: launch.train's parser generated from the
fields of toolkit.config.RunConfig, the same options on other command lines
(add_run_options / check_run_options), and --config files. toolkit.config re-exports every
name here, so callers keep importing them from there.
"""
import argparse
import json
from dataclasses import fields

from toolkit.config import NOT_LOADED, RUN_FACTS, ConfigError, RunConfig, _resolve

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options explain their fallback themselves)."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if isinstance(action, OnOff):
            return f"{action.option_strings[0]} [on|off], {', '.join(action.option_strings[1:])}"
        return super()._format_action_invocation(action)


ON_OFF = {"on": True, "true": True, "yes": True, "1": True,
          "off": False, "false": False, "no": False, "0": False}


class OnOff(argparse.Action):
    """A boolean option: --x or --x on sets it, --x off or --no-x clears it (true/false,
    yes/no and 1/0 are taken too)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        negatives = ["--no-" + s[2:] for s in option_strings if s.startswith("--")]
        super().__init__(option_strings + negatives, dest, nargs="?", default=default,
                         help=help, metavar="on|off")
        self.negatives = negatives

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string in self.negatives:
            if value is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value, got "
                                                   f"{value!r}")
            setattr(namespace, self.dest, False)
        elif value is None:
            setattr(namespace, self.dest, True)
        elif value.lower() in ON_OFF:
            setattr(namespace, self.dest, ON_OFF[value.lower()])
        else:
            raise argparse.ArgumentError(self, f"expected on or off, got {value!r}")


def _flag_type(spec):
    if spec.metadata["type"] is not None:
        return spec.metadata["type"]
    default_type = {"int": int, "float": float, "str": str}.get(
        spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", ""))
    return default_type or str


def _flag(spec):
    return spec.metadata["flag"] or "--" + spec.name.replace("_", "-")


def _flag_kwargs(spec, default):
    """add_argument's keywords for a RunConfig field (help and choices read from their
    registries now)."""
    meta = spec.metadata
    kwargs = {"default": default, "help": _resolve(meta["help"]), "dest": spec.name}
    if spec.type in (bool, "bool"):
        kwargs["action"] = OnOff
    else:
        kwargs["type"] = _flag_type(spec)
        for key in ("choices", "metavar", "nargs", "const"):
            if key == "choices" and not meta["parser_choices"]:
                continue
            value = _resolve(meta[key])
            if value is not None:
                kwargs[key] = value
    return kwargs


def add_options(parser):
    """One flag per RunConfig field, grouped as in --help; booleans are --x [on|off] /
    --no-x."""
    groups = {}
    for spec in fields(RunConfig):
        group = groups.get(spec.metadata["group"]) or groups.setdefault(
            spec.metadata["group"], parser.add_argument_group(spec.metadata["group"]))
        group.add_argument(_flag(spec), **_flag_kwargs(spec, spec.default))


def add_run_options(parser, names, *, defaults=None, flags=None, notes=None):
    """Adds the RunConfig options `names` to another command line's parser (a benchmark's,
    a study's), with launch.train's type, choices and help, so that an option that means the
    same thing is given, parsed and checked the same way everywhere.

    defaults: {name: value} where the command line has its own default (shown in --help);
    flags: {name: ("--flag", ...)} where it keeps its own spelling (the dest stays the
    field's name); notes: {name: text} appended to the help, what the option does there.
    Check the values after parsing with check_run_options. Returns `names`."""
    specs = {spec.name: spec for spec in fields(RunConfig)}
    defaults, flags, notes = defaults or {}, flags or {}, notes or {}
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise ValueError(f"not RunConfig options: {', '.join(unknown)}")
    shows_defaults = isinstance(parser.formatter_class, type) and issubclass(
        parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for name in names:
        spec = specs[name]
        kwargs = _flag_kwargs(spec, defaults.get(name, spec.default))
        if notes.get(name):
            kwargs["help"] += "; " + notes[name]
        if not shows_defaults and kwargs["default"] is not None and "type" in kwargs:
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(*flags.get(name, (_flag(spec),)), **kwargs)
    return tuple(names)


def check_run_options(parser, namespace, names):
    """The values of the options add_run_options added, checked as launch.train checks them
    (RunConfig.validate with the other options at their defaults; a None value, a command
    line's "none given", is left out); a bad one ends in parser.error (exit 2, one line)."""
    given = {name: getattr(namespace, name) for name in names
             if getattr(namespace, name) is not None}
    try:
        RunConfig(**given).validate()
    except ConfigError as exc:
        parser.error(str(exc))


def load_config_file(path):
    """The options saved in a run's config.json (run facts and run-specific ones dropped)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path} cannot be read as JSON: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of options")
    known = {spec.name for spec in fields(RunConfig)}
    unknown = sorted(set(saved) - known - set(RUN_FACTS) - set(NOT_LOADED))
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return {k: v for k, v in saved.items() if k in known and k not in NOT_LOADED}


def from_namespace(namespace):
    return RunConfig(**{spec.name: getattr(namespace, spec.name) for spec in fields(RunConfig)})


def parse(parser, argv=None):
    """RunConfig from the command line: defaults < --config FILE < flags; validated."""
    namespace = parser.parse_args(argv)
    if namespace.config:
        parser.set_defaults(**load_config_file(namespace.config))
        namespace = parser.parse_args(argv)
    return from_namespace(namespace).validate()

