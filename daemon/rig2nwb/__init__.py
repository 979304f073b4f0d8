"""rig2nwb: turn a two-photon rig's TIFF output into NWB files while the experiment runs."""

__version__ = "0.1.0"
