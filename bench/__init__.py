"""Benchmarks for alert_worker: ``python -m bench.run --quick``. Not part of the package."""
