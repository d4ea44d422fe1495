"""Benchmarks: call-setup rate, media capacity and voice latency, each against DESIGN.md's
targets and beside a reference measured in the same run (``make bench``; docs/benchmarks.md)."""
