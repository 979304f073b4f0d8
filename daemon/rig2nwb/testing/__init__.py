"""Helpers for rig2nwb's own tests (and the benchmarks): not used by the daemon itself.

Each module does one thing the tests need, independently of the code under test:

- ``paths``: the repository checkout and the shared fixtures folder (``shared_fixture``);
- ``configs``: the one writer of config TOML files (``write_config``, ``append_config``);
- ``labs``: ``Lab``, a temporary rig, output and state folder with a config pointing at them;
- ``services``: the real service run in this process until a condition holds;
- ``engines``: the real Engine driven step by step, without the service loop;
- ``waits``: polling a condition with a timeout;
- ``tiffs``: TIFFs written and read back page by page with tifffile;
- ``scanimage_raw``: a ScanImage file's header and page descriptions, read with tifffile alone;
- ``nwbfiles``: NWB files read with h5py, and a small valid one written with pynwb;
- ``filetrees``: checksums of files and trees, removing very deep trees;
- ``suite2p_folders``: suite2p output folders (copies of the fixtures, synthetic, malicious);
- ``suite2p_sessions``: a converted session with a suite2p folder, and ``rig2nwb attach``;
- ``receivers``: local HTTP and SMTP servers taking the notifications (SMTP needs aiosmtpd);
- ``status_pages``: the status page as a strict HTML5 parser reads it (needs html5lib);
- ``figures``: figures the fault, bad-input and security tests record for the selftest report;
- ``simrig``: a simulated two-photon rig writing TIFFs page by page.

Nothing here imports pytest at import time; the test-only packages (pytest, aiosmtpd, html5lib) are
imported only by the functions that need them.
"""
