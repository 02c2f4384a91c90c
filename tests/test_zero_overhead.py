"""Under jax.jit every core transform compiles to the program raw JAX compiles."""

import pytest

from benchmarks.bench_core import transform_pairs
from benchmarks.harness import compiled, flops, hlo_ops


@pytest.mark.parametrize("job, ours, theirs, args", transform_pairs(16), ids=lambda v: v if isinstance(v, str) else "")
def test_same_optimized_program_as_raw_jax(job, ours, theirs, args):
    c_ours, c_jax = compiled(ours, *args), compiled(theirs, *args)
    assert flops(c_ours) == flops(c_jax)
    assert hlo_ops(c_ours) == hlo_ops(c_jax)
    assert sum(hlo_ops(c_ours).values()) > 5          # the comparison saw real programs
