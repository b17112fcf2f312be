"""Scoring a model on a split: each rank scores its shard, the sums are added over ranks."""
import torch
import torch.nn.functional as F

from toolkit import job
from toolkit.data import shard_loader


def evaluate(model, dataset, ctx, batch_size, device=torch.device("cpu")):
    """Loss and accuracy over the whole of `dataset` (each rank scores its shard)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for x, y in shard_loader(dataset, batch_size, ctx.rank, ctx.size, 0, 0, train=False):
            x, y = x.to(device), y.to(device)
            out = model(x)
            totals += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(),
                                    (out.argmax(1) == y).sum().item(), len(y)],
                                   dtype=torch.float64)
    model.train()
    loss_sum, correct, n = job.allreduce_sum(totals, name="eval.totals").tolist()
    return loss_sum / n, correct / n


def scores_text(scores):
    return " ".join(f"{key}={value:.4f}" for key, value in scores.items())
