"""The catalog: policies, revisions, serving pointers, runs and engines, as one projection of the log."""
