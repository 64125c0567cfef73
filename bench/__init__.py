"""Benchmarks (GPU): ``python -m bench.qmatmul``; shapes in `bench.shapes`."""
