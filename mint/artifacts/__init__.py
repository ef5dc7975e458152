"""The artifact store: write-once, content-checked objects (adapter revisions) on a local directory or
S3. Torch-free, so the control plane and the engines' fetchers share it.
"""
