"""The ``insitu`` command line: a thin layer over :class:`insitu.Client`."""
