"""Example two-photon analyses for insitu: projections and per-ROI dF/F traces."""
