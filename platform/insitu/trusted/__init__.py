"""The trusted side: what the server believes about a job, from what it measured itself.

User code runs in the runner's own process, so every file a job writes (its outcome,
progress, results, log) was written by the user. Modules here read those files only
through size limits and validation, list and hash results themselves, meter from the
backend, bound every text a job can put in front of its owner, and write the provenance
from the server's records. Nothing here imports the runtime's code paths that user code
could patch; the runtime only reports.
"""
