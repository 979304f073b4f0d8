"""Names of the HDF5 compression filters, for describing how an output stores its frames as read
back from the file (batch_convert, compression_table). Standard library only."""

BLOSC_FILTER = 32001  # HDF5's registered filter id of Blosc (hdf5plugin.Blosc.filter_id)
BLOSC_CODECS = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
