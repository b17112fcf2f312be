"""Measured inputs of the projection, from the communication benchmark's JSON and/or flags.

The benchmark (`python -m launch.bench_comm --json FILE`) writes per-strategy step times
(`step_s`: none, sync, local, dasgd) and, when it measured them, allreduce timings and the
message size. Flags override what the JSON holds and fill in what it lacks.

The alpha-beta ring allreduce model: on p workers an allreduce of n bytes takes
    t(p, n) = 2(p-1)·alpha + 2(p-1)/p · n / beta
(2(p-1) sequential hops of reduce-scatter + allgather, each moving n/p bytes).
"""
import json
import os
from dataclasses import dataclass

import numpy as np

# Names under which the benchmark (or a user) may store each quantity.
ALLREDUCE_KEYS = ("allreduce_s", "allreduce_time_s", "allreduce_seconds")
BYTES_KEYS = ("bytes", "message_bytes", "allreduce_bytes", "model_bytes", "param_bytes")
WORKERS_KEYS = ("world_size", "workers", "np", "ranks")
BATCH_KEYS = ("batch_per_rank", "batch_size", "batch")
SERIES_KEYS = ("allreduce", "allreduce_sizes", "allreduce_by_size")


@dataclass
class Measured:
    compute_s: float          # one step without communication (strategy none)
    points: list              # [(workers, bytes, seconds)] measured allreduces
    workers: int              # workers of the measurements
    bytes: float              # message size of one model average / gradient allreduce
    sync_s: float = None      # measured step of sync (for calibrating overlap)
    dasgd_s: float = None     # measured step of dasgd (shown as a model check)
    batch_per_rank: int = None
    source: str = "flags"
    bytes_note: str = ""
    period: int = None        # dasgd H and d of the benchmark (defaults of the projection)
    delay: int = None


def _pick(d, keys):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def _sections(data):
    """Per-transport sections: data["by_transport"][name] (bench_comm) or data[name]."""
    nested = data.get("by_transport")
    pool = nested if isinstance(nested, dict) else data
    return {k: v for k, v in pool.items() if isinstance(v, dict) and "step_s" in v}


def _lookup_chain(data, path, transport):
    """Dicts to read values from, most specific first.

    bench_comm writes the first transport's step times at the top level and every
    transport (with its allreduce timing) under by_transport; --transport picks one."""
    sections = _sections(data)
    if transport is not None:
        if transport not in sections:
            raise ValueError(f"--transport {transport!r} not in {path} (has "
                             f"{', '.join(sorted(sections)) or 'no transport sections'})")
        return [sections[transport], data]
    if "step_s" in data:
        first = sections.get(data.get("transport"))
        return [data] + ([first] if first else [])
    if not sections:
        raise ValueError(f"{path} has no 'step_s' (per-strategy step times), at the top "
                         f"level or in a section")
    if len(sections) > 1:
        raise ValueError(f"{path} has sections {', '.join(sorted(sections))}: choose one "
                         f"with --transport")
    return [next(iter(sections.values())), data]


def _first(chain, keys):
    for d in chain:
        value = _pick(d, keys)
        if value is not None:
            return value
    return None


def model_bytes(name):
    """float32 bytes of the parameters of a toolkit model (what one average moves)."""
    from models import build_model

    model = build_model(name, num_classes=10)
    return 4.0 * sum(p.numel() for p in model.parameters())


def _series(raw, workers, path):
    """Allreduce timings by size: a list of {bytes, seconds[, workers]} or {bytes: seconds}."""
    points = []
    items = raw.items() if isinstance(raw, dict) else [(None, x) for x in raw]
    for size, value in items:
        try:
            if isinstance(value, dict):
                p = int(_pick(value, WORKERS_KEYS) or workers)
                points.append((p, float(_pick(value, BYTES_KEYS)),
                               float(_pick(value, ALLREDUCE_KEYS + ("seconds", "s", "time_s")))))
            else:
                points.append((workers, float(size), float(value)))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: cannot read allreduce timing entry {value!r} "
                             f"(want bytes and seconds)") from None
    return points


def load_bench(path, transport=None):
    """Everything the projection can use from a bench_comm JSON file, as a dict."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"benchmark JSON not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    chain = _lookup_chain(data, path, transport)
    step = _first(chain, ("step_s",))
    if not isinstance(step, dict) or "none" not in step:
        raise ValueError(f"{path}: step_s must map strategy -> seconds and include 'none'")
    workers = _first(chain, WORKERS_KEYS)
    nbytes = _first(chain, BYTES_KEYS)
    bytes_note = f"message size from {os.path.basename(path)}"
    if nbytes is None and _first(chain, ("model",)):
        name = _first(chain, ("model",))
        try:
            nbytes = model_bytes(name)
        except ValueError as exc:
            raise ValueError(f"{path}: no message size and model {name!r} unknown ({exc}); "
                             f"pass --bytes") from None
        bytes_note = f"message size = float32 parameters of {name}, counted"
    out = {"compute_s": step["none"], "sync_s": step.get("sync"), "dasgd_s": step.get("dasgd"),
           "workers": workers, "bytes": nbytes, "bytes_note": bytes_note,
           "batch_per_rank": _first(chain, BATCH_KEYS),
           "period": _first(chain, ("period",)),
           # the d the benchmark's dasgd ran with (under --delay auto: the one it chose)
           "delay": _first(chain, ("dasgd_delay",)) or _first(chain, ("delay",))}
    series = _first(chain, SERIES_KEYS)
    single = _first(chain, ALLREDUCE_KEYS)
    out["points"] = []
    if isinstance(series, (list, dict)):
        out["points"] = _series(series, int(workers or 2), path)
    out["allreduce_s"] = single if isinstance(single, (int, float)) else None
    return out


def measured_inputs(bench=None, transport=None, *, compute_s=None, allreduce_s=None,
                    nbytes=None, workers=None, batch_per_rank=None):
    """Merge the benchmark JSON (optional) with the flags; flags win."""
    got = load_bench(bench, transport) if bench else {"points": []}
    compute = compute_s if compute_s is not None else got.get("compute_s")
    p = int(workers or got.get("workers") or 2)
    size = nbytes if nbytes is not None else got.get("bytes")
    note = "message size from --bytes" if nbytes is not None else got.get("bytes_note", "")
    points = list(got["points"])
    single = allreduce_s if allreduce_s is not None else got.get("allreduce_s")
    if single is not None:
        if size is None:
            raise ValueError("an allreduce time needs the message size: pass --bytes")
        if allreduce_s is not None:
            points = []  # a timing given on the command line replaces the JSON's
        points.append((p, float(size), float(single)))
    if compute is None:
        raise ValueError("no compute time per step: pass --bench (with step_s.none) or --compute-s")
    if not points:
        raise ValueError("no allreduce timing: the benchmark JSON has no allreduce_s and "
                         "bytes; pass --allreduce-s SECONDS and --bytes N")
    if size is None:
        size = max(pt[1] for pt in points)
    for name, value in (("compute time", compute), ("message size", size)):
        if float(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if p < 2:
        raise ValueError(f"measurements need at least 2 workers to time an allreduce, got {p}")
    return Measured(compute_s=float(compute), points=points, workers=p, bytes=float(size),
                    sync_s=got.get("sync_s"), dasgd_s=got.get("dasgd_s"),
                    batch_per_rank=batch_per_rank or got.get("batch_per_rank"),
                    source=bench or "flags", bytes_note=note,
                    period=got.get("period"), delay=got.get("delay"))


def ring_allreduce_s(p, nbytes, alpha, beta):
    """Alpha-beta time of a ring allreduce; zero on one worker."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 1, 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta, 0.0)


def fit_alpha_beta(points, alpha=None):
    """(alpha s, beta bytes/s) from measured (workers, bytes, seconds).

    Two or more distinct sizes: least squares for alpha and 1/beta (both kept >= 0).
    One size: alpha is the assumed latency per hop and beta is solved from the timing."""
    a = np.array([2.0 * (p - 1) for p, _, _ in points])
    b = np.array([2.0 * (p - 1) / p * n for p, n, _ in points])
    t = np.array([s for _, _, s in points])
    if np.any(t <= 0):
        raise ValueError(f"allreduce timings must be positive, got {t.tolist()}")
    distinct = len({(p, n) for p, n, _ in points}) >= 2
    if alpha is None and distinct:
        (al, inv_beta), *_ = np.linalg.lstsq(np.stack([a, b], 1), t, rcond=None)
        if al < 0:  # latency below resolution: a pure bandwidth fit
            al, inv_beta = 0.0, float(b @ t / (b @ b))
        if inv_beta <= 0:
            raise ValueError("allreduce timings do not grow with the message size: "
                             "cannot calibrate bandwidth; pass --alpha")
        return float(al), float(1.0 / inv_beta)
    alpha = 5e-6 if alpha is None else alpha
    rest = t - a * alpha
    if np.any(rest <= 0):
        raise ValueError(f"measured allreduce ({t.min():.3g} s) is not longer than the "
                         f"assumed latency term; lower --alpha ({alpha:g} s)")
    inv_beta = float(np.mean(rest / b))
    return float(alpha), float(1.0 / inv_beta)
