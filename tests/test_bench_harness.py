"""The benchmark harness's interleaving (benchmarks/harness.py): what it calls and times."""

import pytest

from benchmarks.harness import interleaved


def _counter():
    calls = []

    def f():
        calls.append(1)
        return 0.0

    return f, calls


@pytest.mark.parametrize("settle", [None, 0, 3])
def test_interleaved_calls_each_contender_burst_times_per_round(settle):
    f, f_calls = _counter()
    g, g_calls = _counter()
    t = interleaved({"f": f, "g": g}, reps=4, warmup=2, burst=5, settle=settle)
    assert set(t) == {"f", "g"} and all(v >= 0 for v in t.values())
    assert len(f_calls) == len(g_calls) == 2 + 4 * 5


@pytest.mark.parametrize("settle", [-1, 5, 7])
def test_interleaved_rejects_a_settle_that_times_nothing(settle):
    f, _ = _counter()
    with pytest.raises(ValueError, match=r"interleaved: settle=.* must be in \[0, burst=5\)"):
        interleaved({"f": f}, reps=1, burst=5, settle=settle)


def test_settle_leaves_the_first_calls_of_each_turn_out_of_the_median():
    import time

    calls = [0]

    def cold_then_warm():   # with burst=3 and no warm-up, the first two calls of each turn
        calls[0] += 1
        time.sleep(0.02 if calls[0] % 3 != 0 else 0.0)

    kept = interleaved({"f": cold_then_warm}, reps=3, warmup=0, burst=3, settle=2)
    pooled = interleaved({"f": cold_then_warm}, reps=3, warmup=0, burst=3, settle=0)
    assert kept["f"] < 0.01 < 0.015 < pooled["f"]
