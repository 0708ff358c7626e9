"""Example EM analyses for insitu: intensity histogram and 2x downsampling."""
