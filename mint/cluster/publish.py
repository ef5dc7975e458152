"""A served revision on a local cluster without training one: random adapter bytes for the cluster's
base in its bucket, then on its topic the policy's registration, the export, a passing evaluation and
the promotion. Benchmarks and tests of serving use it; the lifecycle they skip is tested elsewhere.
"""

from __future__ import annotations

import hashlib

from events.catalog import Promote, RegisterPolicy
from events.evaluation import EvaluationCompleted
from events.kafka_log import KafkaLog
from events.seal import Seal
from events.training import RevisionExported
from mint.adapters.peft_layout import encode_peft
from mint.adapters.synthetic import random_adapter
from mint.artifacts.keys import adapter_key
from mint.artifacts.s3 import S3ArtifactStore
from mint.bases.info import read_base_info
from mint.cluster.launcher import S3_CREDENTIALS
from mint.cluster.table import ClusterDir

RANK, ALPHA, TARGETS = 4, 8.0, ("q_proj", "v_proj")


async def publish_random_revision(cluster: ClusterDir, policy: str, revision: str, seed: int = 3) -> str:
    """`policy@revision` promoted on the cluster, its adapter random (seeded) for the cluster's base."""
    return await announce(cluster, await upload_random_adapter(cluster, policy, revision, seed))


async def upload_random_adapter(
    cluster: ClusterDir, policy: str, revision: str, seed: int = 3
) -> RevisionExported:
    """A random (seeded) adapter for the cluster's base in its bucket, and the export naming it (not
    on the log yet: `announce` appends it)."""
    table = cluster.read()
    base_id = table.base.split(":", 1)[0]
    adapter = random_adapter(
        read_base_info(cluster.bases / base_id), r=RANK, alpha=ALPHA, targets=TARGETS, seed=seed
    )
    data = encode_peft(adapter)
    async with S3ArtifactStore.connect(
        table.bucket,
        endpoint_url=table.s3,
        region="us-east-1",
        access_key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ) as store:
        stored = await store.put(adapter_key(policy, revision, hashlib.sha256(data).hexdigest()), data)
    return RevisionExported.create(
        policy=policy,
        revision=revision,
        base_id=base_id,
        uri=stored.key,
        sha256=stored.sha256,
        bytes=stored.size,
        rank=RANK,
        alpha=ALPHA,
        targets=list(TARGETS),
    )


async def announce(cluster: ClusterDir, export: RevisionExported) -> str:
    """On the cluster's topic: the policy's registration, `export`, a passing evaluation, the promotion."""
    table = cluster.read()
    evaluation = EvaluationCompleted.create(
        policy=export.policy,
        revision=export.revision,
        suite="smoke",
        suite_version=1,
        score=1.0,
        verdict="pass",
    )
    seal = Seal.from_secret(cluster.key.read_text().strip())
    async with KafkaLog(table.kafka, topic=table.topic, seal=seal) as log:
        await log.append([RegisterPolicy.create(policy=export.policy, base_id=export.base_id)])
        await log.append([export, evaluation])
        await log.append([Promote.create(policy=export.policy, revision=export.revision)])
    return f"{export.policy}@{export.revision}"
