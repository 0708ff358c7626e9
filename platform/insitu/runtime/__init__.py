"""What runs next to the data, inside a job's environment.

It imports only dask, zarr, the store libraries and the spec models; never the web
or database layers, so any analysis image that installs insitu can carry it.
"""
