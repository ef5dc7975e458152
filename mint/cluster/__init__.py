"""`mint cluster`: a whole MinT cluster on one machine, each part its own OS process.

An S3-protocol server (moto), a Kafka-protocol broker (tansu) that keeps its log in that S3, and every
actor replica (`mint actor NAME`) with a home of its own, all on loopback. `D/cluster.json` is the
process table that tests, scripts and people read (`table.py`); `launcher.py` starts, stops, signals,
restarts, adds and removes its processes.
"""
