"""Streamed averaging: the model cut into F fragments whose rounds take turns.

Lay the averaged tensors end to end and cut that byte range into F parts of about equal
size (a cut falls between elements, inside a tensor if need be). Fragment f is launched
every H steps at an offset of floor(f·H/F) steps, so over a period every fragment is
averaged exactly once and, when H >= F, each step sends about 1/F of the model. Each
fragment follows the delayed merge rule on its own (launch, d steps later merge), so with
F = 1 this is exactly the unfragmented schedule.
"""


def fragment_offsets(count, period):
    """Launch offset (in steps) of each fragment within a period."""
    return [f * period // count for f in range(count)]


def split_pieces(tensors, count):
    """Cut `tensors` into `count` fragments of about equal bytes.

    Returns one list per fragment of (tensor index, start, stop) element ranges. Only
    contiguous tensors are cut; a non-contiguous one goes whole to the fragment in which it
    starts. Fragments may come out empty only if there are fewer elements than fragments."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    total = sum(sizes)
    bounds = [total * f // count for f in range(1, count)] + [total]
    fragments = [[] for _ in range(count)]
    f, offset = 0, 0
    for index, (t, size) in enumerate(zip(tensors, sizes)):
        item = t.element_size()
        start = 0
        while start < t.numel():
            while f < count - 1 and offset + start * item >= bounds[f]:
                f += 1
            stop = t.numel()
            if t.is_contiguous() and f < count - 1:
                # elements up to the fragment's byte bound (at least one, so it advances)
                stop = min(stop, max(start + 1, -(-(bounds[f] - offset) // item)))
            fragments[f].append((index, start, stop))
            start = stop
        offset += size
    return fragments


def piece_views(tensors, pieces):
    """Views of `tensors` for one fragment's pieces (a whole tensor stays itself)."""
    views = []
    for index, start, stop in pieces:
        t = tensors[index]
        if start == 0 and stop == t.numel():
            views.append(t)
        else:
            views.append(t.detach().view(-1)[start:stop])
    return views


def check_fragments(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"fragments must be an integer >= 1, got {value!r}")
    return value

