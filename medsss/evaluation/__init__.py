"""Benchmark evaluation: sample once, score once, evaluate every decoding strategy offline."""
