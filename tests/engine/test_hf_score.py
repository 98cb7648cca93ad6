import math

from hypothesis import given
from hypothesis import strategies as st

from fslm.engine import load_engine
from fslm.engine.hf_score import _Unit, fill_rows
from tests.engine.test_hf import reference_logprob


def unit(ctx_len: int, *cont_lens: int) -> _Unit:
    return _Unit(list(range(ctx_len)), [(k, [1] * n) for k, n in enumerate(cont_lens)])


@given(st.lists(st.tuples(st.integers(1, 40), st.lists(st.integers(1, 8), min_size=1, max_size=4)), min_size=1))
def test_fill_rows_places_every_unit_once_within_the_width(shapes):
    units = [unit(c, *conts) for c, conts in shapes]
    width = max(u.width for u in units)
    rows = fill_rows(units, width)
    placed = [id(u) for r in rows for u in r.units]
    assert sorted(placed) == sorted(id(u) for u in units)
    assert all(r.width <= width for r in rows)
    # Any-fit: the unit that opened a later row did not fit an earlier one, so no two rows could have been one.
    widths = sorted(r.width for r in rows)
    assert len(rows) == 1 or widths[0] + widths[1] > width


def test_fill_rows_puts_short_units_side_by_side():
    rows = fill_rows([unit(50, 4, 4), unit(10, 2), unit(20, 3), unit(30, 5), unit(5, 1)], 58)
    assert sorted(r.width for r in rows) == [18, 58, 58]  # 58 | 35 + 23 | 12 + 6
    row = next(r for r in rows if len(r.units) > 1)
    assert row.positions[: row.units[0].width] == list(range(row.units[0].width))
    assert len(set(row.segments)) == sum(len(u.conts) + 1 for u in row.units)


def test_units_that_share_a_row_score_as_each_does_alone(tiny_model_dir):
    """Short items of different widths are packed several to a row (fewer padded tokens than one item per row) and
    every score equals the plain forward pass of its own context + continuation."""
    engine = load_engine(str(tiny_model_dir))
    contexts, conts = [], []
    for k in range(12):
        ctx = "Q: " + "red fox " * (1 + 3 * (k % 4)) + "?"
        options = [" yes", " no", " a small brown fox"][: 1 + k % 3]
        contexts += [ctx] * len(options)
        conts += options
    scores = engine.score(contexts, conts)
    assert engine.stats.calls == 1
    unit_widths: dict[tuple[int, ...], int] = {}
    for c, x in zip(contexts, conts):
        ctx, cont = engine.encode_pair(c, x)
        unit_widths[tuple(ctx)] = unit_widths.get(tuple(ctx), len(ctx)) + len(cont)
    one_unit_per_row = len(unit_widths) * max(unit_widths.values())
    assert engine.stats.forward_tokens < one_unit_per_row
    for s, c, x in zip(scores, contexts, conts):
        assert math.isclose(s.logprob, reference_logprob(engine, c, x), rel_tol=1e-4, abs_tol=1e-4)
