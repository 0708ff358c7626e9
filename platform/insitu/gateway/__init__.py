"""The store gateway: how a job reaches the object store without holding a credential.

It runs on the trusted side, one per job, and accepts the job's S3 requests (their
signatures are ignored: the job holds only a placeholder key). It allows reads of the
job's dataset and workspace, writes of the job's own reports and results, and nothing
else; signs what it allows with the platform's scoped credentials; and counts the bytes
in each direction, so the server knows what a job scanned without asking the job.
"""
