"""Everything the benchmark scripts share, in small modules (one job each).

The rule: a benchmark script (``benchmarks/<name>.py``, run as ``python -m benchmarks.<name>``)
imports only from ``benchmarks.kit.*``, ``rig2nwb.*`` and third-party packages, never from another
script; and nothing here imports a script.

Some scripts also run in ``benchmarks/.venv-peers`` (their NeuroConv children), which has neither
rig2nwb nor hdf5plugin. So at module level the kit uses only the standard library, numpy, tifffile
and psutil; rig2nwb, h5py and hdf5plugin are imported inside the functions that need them. This
file imports nothing, so ``python -m benchmarks.kit.<module>`` stays cheap.
"""
