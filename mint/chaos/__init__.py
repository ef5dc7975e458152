"""Proof under faults: a mixed workload driven through MinT's public interfaces against a `mint cluster`,
faults injected with `mint cluster kill|restart`, and the invariants of docs/DESIGN checked at the end."""
