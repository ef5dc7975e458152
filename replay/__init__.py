"""Tools over the log: rebuild, verify, audit, point-in-time and recovery. They re-run the same folds
as the live projector and never re-make a decision."""
