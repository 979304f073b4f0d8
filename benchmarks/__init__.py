"""rig2nwb's benchmarks. Each script runs from the repository root as
``python -m benchmarks.<name> [options]``; what the scripts share is in ``benchmarks.kit``.
See benchmarks/README.md."""
