"""Find, from a block's own computation, which projections produce each layer's input (see models.absorb).

`plan_block` returns {consumer: Absorption} for the consumers whose input permutation can be absorbed. A plan
found for an earlier block with the same projections is tried first (one verification); otherwise each
consumer kind (a layer, or one projection of every expert of a fused module) is decided on one member the
probe reaches, then copied to the kind's other members and verified for all of them together.
"""

from __future__ import annotations

from collections.abc import Iterator

from zprune_cli.base.lazy import lazy
from zprune_cli.models.absorb import (Absorption, BlockProbe, Feed, absorb, permute_columns,
                                      random_permutation)
from zprune_cli.models.blocks import bias_of, in_features, weight_view

torch = lazy("torch")
experts = lazy("zprune_cli.models.experts")


# Channels of each consumer a later block's known plans are verified on (its first block's were found and
# verified on all of them): at Llama-2-7B's shape, permuting whole weights and back took 1.3 s of a block's 1.8 s.
KNOWN_PLAN_MOVES = 64


def signature(probe: BlockProbe) -> tuple:
    """What decides the plans: the block's class and its projections' names, classes, shapes and biases."""
    return (type(probe.block).__name__,) + tuple(
        (name, type(module).__name__, tuple(weight_view(module).shape), bias_of(module) is not None)
        for name, module in probe.projections.items())


def plan_block(probe: BlockProbe, consumers: list[str], known: list[Absorption] | None = None) -> dict[str, Absorption]:
    """The verified plans of this block's `consumers` (names within the block)."""
    if known is not None:  # every plan at once, each moving a few channels: a run of the block, few copies
        plans = [p for p in known if p.consumer in consumers]
        if verify(probe, plans, KNOWN_PLAN_MOVES):
            return {p.consumer: p for p in plans}
    plans, decided = {}, []
    for names in _by_kind(probe, consumers).values():
        reached = next((n for n in names if probe.inputs.get(n) is not None), None)
        if reached is None or any(torch.equal(probe.inputs[reached], seen) for seen in decided):
            continue  # a consumer reading what an earlier one read: the same rows would feed it, claimed or none
        decided.append(probe.inputs[reached])
        plan = _decide(probe, reached)
        if plan is None:
            continue
        group = [_rebind(plan, name, probe) for name in names]
        if _free(plans, group) and verify(probe, group):
            plans.update({p.consumer: p for p in group})
    return plans


def _by_kind(probe: BlockProbe, items: list) -> dict[str, list]:
    """Consumers (names or plans) by kind: an expert's slice belongs with the same slice of every expert."""
    kinds: dict[str, list] = {}
    for item in items:
        name = item.consumer if isinstance(item, Absorption) else item
        key = name.rpartition(".")[0] if isinstance(probe.projections[name], experts.ExpertSlice) else name
        kinds.setdefault(key, []).append(item)
    return kinds


def _rebind(plan: Absorption, name: str, probe: BlockProbe) -> Absorption:
    """The plan of one expert's slice, moved to the same slice of another expert."""
    if name == plan.consumer:
        return plan
    index = str(probe.projections[name].index)
    feeds = tuple(Feed(f"{f.producer.rpartition('.')[0]}.{index}", f.rows) for f in plan.feeds)
    return Absorption(name, plan.kind, feeds, plan.head_dim, plan.group)


def _free(plans: dict[str, Absorption], group: list[Absorption]) -> bool:
    """No producer row is claimed twice (a row read by two consumers could follow only one of them)."""
    taken = {(f.producer, int(r)) for p in plans.values() for f in p.feeds for r in f.rows}
    return not any((f.producer, int(r)) in taken for p in group for f in p.feeds for r in f.rows)


def _decide(probe: BlockProbe, name: str) -> Absorption | None:
    """The first kind whose probed producers, taken together, verify; None when none does."""
    passed: dict[tuple, list[Feed]] = {}
    reaches: dict[str, bool] = {}
    for kind, feed, layout in _candidates(probe, name):
        if feed.producer not in reaches:
            reaches[feed.producer] = _reaches(probe, name, feed.producer)
        if not reaches[feed.producer]:
            continue  # no row of this producer can change the input: every slice of it would fail
        if all(_changes_only(probe, name, feed, j, kind, layout) for j in (1, len(feed.rows) - 2)):
            passed.setdefault((kind, layout), []).append(feed)
    for (kind, (head_dim, group)), feeds in sorted(passed.items(), key=lambda item: item[0][0] != "channel"):
        plan = Absorption(name, kind, tuple(feeds), head_dim, group)
        if verify(probe, [plan]):
            return plan
    return None


def _candidates(probe: BlockProbe, name: str) -> Iterator[tuple[str, Feed, tuple[int, int]]]:
    """(kind, feed, (head_dim, group)) for every slice of a projection whose width could feed `name`."""
    consumer = probe.projections[name]
    width = in_features(consumer)
    layouts = []
    if probe.geometry is not None:
        heads, kv_heads, head_dim = probe.geometry
        if heads * head_dim == width and head_dim >= 4:
            layouts = [(head_dim, heads // kv) for kv in dict.fromkeys((kv_heads, 1, heads)) if kv and heads % kv == 0]
    for other, module in probe.projections.items():
        if other == name or not _same_scope(consumer, module):
            continue
        rows = weight_view(module).shape[0]
        for feed_rows in _slices(rows, width, 1):
            yield "channel", Feed(other, feed_rows), (0, 1)
        for head_dim, group in layouts:
            for feed_rows in _slices(rows, width // group // head_dim, head_dim):
                yield "head", Feed(other, feed_rows), (head_dim, group)


def _same_scope(consumer, producer) -> bool:
    """An expert's slice is fed by its own expert's slices only; other layers by other layers."""
    if isinstance(consumer, experts.ExpertSlice) or isinstance(producer, experts.ExpertSlice):
        return (isinstance(consumer, experts.ExpertSlice) and isinstance(producer, experts.ExpertSlice)
                and consumer.owner is producer.owner and consumer.index == producer.index)
    return True


def _slices(rows: int, units: int, unit: int) -> list[torch.Tensor]:
    """Row indices of every slice of `units` x `unit` rows out of `rows`: contiguous chunks and, when there
    are several, interleaved ones (rows seen as [units, k, unit]: GPT-OSS's gate/up, GPT-NeoX's q/k/v)."""
    width = units * unit
    if rows % width:
        return []
    k = rows // width
    contiguous = torch.arange(rows).reshape(k, width)
    interleaved = torch.arange(rows).reshape(units, k, unit)
    return [contiguous[c] for c in range(k)] + ([interleaved[:, c].reshape(-1) for c in range(k)] if k > 1 else [])


def _predicted(kind: str, j: int, layout: tuple[int, int], width: int) -> torch.Tensor:
    """bool [width]: the consumer channels that feed position j may reach."""
    expected = torch.zeros(width, dtype=torch.bool)
    if kind == "channel":
        expected[j] = True
    else:
        head_dim, group = layout
        g, d = divmod(j, head_dim)
        expected[[(g * group + r) * head_dim + d for r in range(group)]] = True
    return expected


def _reaches(probe: BlockProbe, name: str, producer: str) -> bool:
    """Whether changing all of `producer`'s rows changes `name`'s input at all: one block run per producer
    (for every consumer at once) that rules out every slice of a producer upstream of nothing `name` reads.
    Layers that read the residual stream (q/k/v, gate/up) have hundreds of candidate slices and no producer:
    SmolLM2-135M's first block took 1137 runs to rule them out one by one, now 221 (38 of these and 183 row
    probes), with the same plans."""
    if producer not in probe.whole_changes:
        probe.whole_changes[producer] = _inputs_with_all_rows_changed(probe, producer)
    now, base = probe.whole_changes[producer].get(name), probe.inputs[name]
    if now is None or now.shape != base.shape:
        return True  # not comparable: leave the decision to the row probes
    return bool(((now - base).abs() > 1e-6 * float(base.abs().max())).any())


def _inputs_with_all_rows_changed(probe: BlockProbe, producer: str) -> dict[str, torch.Tensor | None]:
    """Every projection's input with `producer`'s weight W replaced by -2 W + s u v^T (u, v seeded random
    vectors, s the mean |W|): a change of every row that no normalisation or scale can undo. Put back exactly."""
    weight = weight_view(probe.projections[producer])
    saved = weight.clone()
    generator = torch.Generator().manual_seed(0)
    u, v = (torch.randn(n, generator=generator).to(saved) for n in saved.shape)
    sample = saved[:: max(1, saved.shape[0] // 256)]  # the mean |W| of about 256 rows: one scale
    weight.mul_(-2).addr_(u, v, alpha=float(sample.abs().float().mean()) + 1e-3)
    try:
        return probe.read_all(producer)
    finally:
        weight.copy_(saved)


def _changes_only(probe: BlockProbe, name: str, feed: Feed, j: int, kind: str, layout: tuple[int, int]) -> bool:
    """Change one row of the producer: some of the channels the kind predicts must change, and no other."""
    weight = weight_view(probe.projections[feed.producer])
    row = int(feed.rows[j])
    saved = weight[row].clone()
    noise = torch.randn(saved.shape, generator=torch.Generator().manual_seed(row)).to(saved)
    weight[row] = -2 * saved + noise * (saved.abs().mean() + 1e-3)
    try:
        now = probe.read(name, feed.producer, row)
    finally:
        weight[row] = saved
    base = probe.inputs[name]
    if now is None or now.shape != base.shape:
        return False
    changed = (now - base).abs().amax(dim=0) > 1e-6 * float(base.abs().max())  # [in]
    return bool(changed.any()) and not bool(changed[~_predicted(kind, j, layout, base.shape[1])].any())


def verify(probe: BlockProbe, plans: list[Absorption], moves: int | None = None) -> bool:
    """Permute every plan's consumer columns and producer rows at random (all of them, or about `moves` channels
    of each consumer): each consumer's input must come out permuted, the block's output unchanged. The weights
    are put back exactly."""
    generator = torch.Generator().manual_seed(1)
    perms = [random_permutation(p, in_features(probe.projections[p.consumer]), generator, moves) for p in plans]
    done = []
    try:
        for plan, perm in zip(plans, perms):
            permute_columns(probe.projections[plan.consumer], perm)
            absorb(probe.projections, plan, perm)
            done.append((plan, perm))
        out, seen = probe.run([p.consumer for p in plans])
    finally:
        for plan, perm in reversed(done):
            inverse = torch.argsort(perm)
            absorb(probe.projections, plan, inverse)
            permute_columns(probe.projections[plan.consumer], inverse)
    tolerance = probe.tolerance()
    if float((out - probe.out).norm()) > tolerance * float((probe.out - probe.hidden.float()).norm()):
        return False
    for plan, perm in zip(plans, perms):
        base, now = probe.inputs[plan.consumer], seen[plan.consumer]
        if base is None:
            continue  # an expert the probe did not reach: it shares its kind's verified plan
        if now is None or now.shape != base.shape:
            return False
        if float((now - base[:, perm]).abs().max()) > tolerance * float(base.abs().max()):
            return False
    return True
