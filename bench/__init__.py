"""Benchmarks of the CoinStats provider; run each with ``python -m bench.<name>`` from the repo root."""
