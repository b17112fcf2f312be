"""Why whitening goes stale, and which refresh rule holds (issue: whitening that does not go
stale). Two measurements on a Fashion-MNIST subset, one process, one thread:

probe():  trains one model with statistics every K-th step and the running averages on the
          others (refresh "ema", the method's rule) and, before every step, evaluates the
          same batch three ways without changing the model: with the running averages (what
          a stale step folds), with the last refresh step's batch statistics, and with this
          batch's own statistics (what k = 1 folds). Per layer it records how far the
          whitening D and the mean have drifted from each of them to the fresh ones.
trials(): short training runs of every refresh rule (k = K) against k = 1, one seed: the
          training loss over the run and the validation accuracy at its end (eval mode, the
          running averages, as launch.train evaluates).

Both step as launch.train does on one rank (RunConfig defaults: SGD momentum 0.9, weight
decay 5e-4; batch 32), with a constant lr in probe() and the cosine schedule in trials().
"""
import copy
import math
import time

import torch
import torch.nn.functional as F

from experiments.bench.layer import invariance_layers

K = 10
BATCH = 32


def fashion_splits(train_subset, val_size, seed=0):
    """(train, val) as (images, labels) tensors: the first train_subset training images
    outside the validation part of Fashion-MNIST (launch.train's split)."""
    from toolkit.data import load_dataset
    bundle = load_dataset("fashion_mnist", seed=seed, val_size=val_size,
                          train_subset=train_subset)

    def tensors(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.tensor(ys)
    return tensors(bundle.train), tensors(bundle.val)


def build(model_name, seed, **layer_options):
    from models import build_model
    torch.manual_seed(seed)
    return build_model(model_name, num_classes=10, in_channels=1, image_size=28, norm="inv",
                       layer_options=layer_options or None)


def optimizer(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def batches(train, seed, batch=BATCH):
    """Shuffled batches, epoch after epoch, from a seeded generator."""
    x, y = train
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i:i + batch]
            yield x[idx], y[idx]


# ---- probe -------------------------------------------------------------------------------

def fresh_statistics(model, x, y):
    """Loss of the batch with its own statistics in every layer (a k = 1 training forward on
    a copy, no gradient) and each layer's (mean, D) in that forward."""
    twin = copy.deepcopy(model).train()
    stats = []
    for _, layer in invariance_layers(twin):
        layer.stats_every, layer.freeze, layer.warm_start = 1, False, 0

        def recording(mean, second, layer=layer, inner=layer._whitening):
            out = inner(mean, second)
            stats.append(tuple(t.detach() for t in out))
            return out
        layer._whitening = recording
    with torch.no_grad():
        loss = F.cross_entropy(twin(x), y).item()
    return loss, stats


def loss_with(model, x, y, stats=None):
    """Loss of the batch in eval mode, i.e. folding the running buffers, or `stats` (one
    (mean, D) per layer) put in their place on a copy."""
    net = copy.deepcopy(model) if stats is not None else model
    if stats is not None:
        for (_, layer), (mean, whitening) in zip(invariance_layers(net), stats):
            layer.running_mean.copy_(mean)
            layer.running_whitening.copy_(whitening)
    net.eval()
    with torch.no_grad():
        loss = F.cross_entropy(net(x), y).item()
    net.train()
    return loss


def drift(fresh, other):
    """(relative Frobenius distance of D, shift of the centring in whitened units: the RMS
    of D_fresh (mu_other - mu_fresh) per coordinate)."""
    (mu, d), (mu_o, d_o) = fresh, other
    rel = (torch.linalg.matrix_norm(d_o - d) / torch.linalg.matrix_norm(d)).mean().item()
    shift = torch.bmm(d, (mu_o - mu).unsqueeze(-1)).pow(2).mean().sqrt().item()
    return rel, shift


def probe(model_name, lr, steps, train, seed=0):
    """Per step: the training loss, whether it refreshed, the three losses of module doc
    and per layer the drift of the running averages and of the last refresh's statistics
    from the fresh ones. Stops at a non-finite loss."""
    model = build(model_name, seed, stats_every=K)
    names = [name for name, _ in invariance_layers(model)]
    first = invariance_layers(model)[0][1]
    opt = optimizer(model, lr)
    data, last, rows = batches(train, seed), None, []
    for step in range(steps):
        x, y = next(data)
        refresh = step < first.warm_start or step % K == 0
        fresh_loss, fresh = fresh_statistics(model, x, y)
        running = [(l.running_mean.clone(), l.running_whitening.clone())
                   for _, l in invariance_layers(model)]
        row = {"step": step, "refresh": refresh, "loss_fresh": fresh_loss,
               "loss_ema": loss_with(model, x, y),
               "drift_ema": [drift(f, r) for f, r in zip(fresh, running)]}
        if last is not None:
            row["loss_last"] = loss_with(model, x, y, last)
            row["drift_last"] = [drift(f, s) for f, s in zip(fresh, last)]
        if refresh:  # the training step below computes exactly these statistics
            last = fresh
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        row["loss_train"] = loss.item()
        rows.append(row)
        if not math.isfinite(row["loss_train"]):
            break
        loss.backward()
        opt.step()
    return {"model": model_name, "lr": lr, "k": K, "warm_start": first.warm_start,
            "layers": names, "steps": rows}


def probe_summary(result):
    """The numbers the docs quote: losses around the first stale step and the mean drift
    of the first stale step of every period (over the layers)."""
    rows, warm = result["steps"], result["warm_start"]
    at = {r["step"]: r for r in rows}
    first_stale = at.get(warm)
    stale_firsts = [r for r in rows if not r["refresh"] and (r["step"] - 1) % K == 0]
    period_ends = [r for r in rows if not r["refresh"] and r["step"] % K == K - 1]

    def mean_drift(rs, key, part):
        vals = [sum(v[part] for v in r[key]) / len(r[key]) for r in rs if key in r]
        return sum(vals) / len(vals) if vals else None
    out = {"model": result["model"], "lr": result["lr"], "first_stale_step": warm}
    if first_stale is not None:
        out.update({"loss_before_first_stale": at[warm - 1]["loss_train"],
                    **{f"first_stale_{k}": first_stale.get(k) for k in
                       ("loss_train", "loss_ema", "loss_last", "loss_fresh")}})
    for key in ("drift_ema", "drift_last"):
        for name, rs in (("first_stale", stale_firsts), ("period_end", period_ends)):
            out[f"{key}_D_{name}"] = mean_drift(rs, key, 0)
            out[f"{key}_mean_{name}"] = mean_drift(rs, key, 1)
    out["steps_run"] = len(rows)
    out["diverged"] = not math.isfinite(rows[-1]["loss_train"])
    return out


# ---- trials ------------------------------------------------------------------------------

def accuracy(model, data):
    x, y = data
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum().item()
                      for i in range(0, len(y), 256))
    model.train()
    return correct / len(y)


def trial(model_name, lr, rule, steps, train, val, seed=0, batch=BATCH):
    """One short run: rule "k1" (statistics every step) or a refresh rule with k = K."""
    options = {} if rule == "k1" else {"stats_every": K, "refresh": rule}
    model = build(model_name, seed, **options)
    opt = optimizer(model, lr)
    data, losses, start = batches(train, seed, batch), [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:  # cosine to 0 over the run, as launch.train
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        x, y = next(data)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        opt.step()
    finite = math.isfinite(losses[-1])
    tail = losses[-K:]
    return {"model": model_name, "lr": lr, "rule": rule, "k": 1 if rule == "k1" else K,
            "steps": steps, "seed": seed, "diverged": not finite,
            "val_acc": accuracy(model, val) if finite else 0.1,
            "loss_last_period": sum(tail) / len(tail), "loss_curve": losses,
            "seconds": time.perf_counter() - start}
