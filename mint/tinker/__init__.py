"""The Tinker-compatible training and sampling API (the protocol of the `tinker` and `mindlab-toolkit`
SDKs), served by `mint up` under /api/v1 on the same trainer, store and log as everything else."""
