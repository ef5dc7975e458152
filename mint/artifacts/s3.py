"""The artifact store on S3 (or any S3-protocol server) via aiobotocore.

Write-once comes from conditional writes (`If-None-Match: *`): S3 refuses, with 412, to create a key
that exists, so two racing puts cannot both win. An object up to `part_size` goes up in one PUT, which S3
makes visible only whole, with its sha256 for S3 to check; a larger one goes up in parts, and only
CompleteMultipartUpload makes it visible, after its sha256 has been checked. A put that fails or is
cancelled before that aborts the upload, so nothing is visible and no parts linger.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from mint.artifacts.keys import check_key
from mint.artifacts.pending_file import PendingFile
from mint.artifacts.store import (
    CHUNK_BYTES,
    ArtifactExists,
    ArtifactMissing,
    Content,
    StoredArtifact,
    check_digest,
    open_source,
)

MIN_PART_BYTES = 5 << 20  # S3's smallest part, except the last
DEFAULT_PART_BYTES = 16 << 20


class S3ArtifactStore:
    def __init__(
        self, client: Any, bucket: str, prefix: str = "", part_size: int = DEFAULT_PART_BYTES
    ) -> None:
        """`client` is an open aiobotocore S3 client; `prefix` is prepended to every key."""
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size {part_size} is below S3's minimum part size {MIN_PART_BYTES}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = DEFAULT_PART_BYTES,
    ) -> AsyncIterator[S3ArtifactStore]:
        """A store with its own client. Credentials default to the usual AWS chain (env, files, roles)."""
        # S3-protocol servers at a custom endpoint (MinIO, moto, Ceph) serve buckets by path, not by host.
        config = AioConfig(s3={"addressing_style": "path"}) if endpoint_url else None
        async with get_session().create_client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        ) as client:
            yield cls(client, bucket, prefix=prefix, part_size=part_size)

    def __repr__(self) -> str:
        return f"S3ArtifactStore('s3://{self.bucket}/{self.prefix}')"

    async def put(self, key: str, source: Content) -> StoredArtifact:
        check_key(key)
        with open_source(source) as stream:
            first = await self._read_part(stream)
            second = await self._read_part(stream) if len(first) == self.part_size else b""
            if not second:
                return await self._put_single(key, first)
            return await self._put_multipart(key, stream, [first, second])

    async def get(self, key: str, dest: Path, verify: str | None = None) -> Path:
        dest = Path(dest)
        body = await self._body(key)
        async with body:
            with PendingFile(dest, dest.parent) as pending:
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    await anyio.to_thread.run_sync(pending.write, chunk)
                check_digest(key, pending.sha256, verify)
                await anyio.to_thread.run_sync(lambda: pending.publish(replace=True))
        return dest

    async def read(self, key: str, verify: str | None = None) -> bytes:
        body = await self._body(key)
        async with body:
            data: bytes = await body.read()
        check_digest(key, hashlib.sha256(data).hexdigest(), verify)
        return data

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    async def _read_part(self, stream: BinaryIO) -> bytes:
        """Up to part_size bytes (fewer only at the end of the stream), read off the event loop."""
        chunks: list[bytes] = []
        size = 0
        while size < self.part_size:
            chunk = await anyio.to_thread.run_sync(stream.read, min(CHUNK_BYTES, self.part_size - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def _put_single(self, key: str, data: bytes) -> StoredArtifact:
        digest = hashlib.sha256(data)
        stored = StoredArtifact(key, digest.hexdigest(), len(data))
        check_digest(key, stored.sha256)
        try:
            await self.client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                IfNoneMatch="*",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            )
        except ClientError as exc:
            if _status(exc) != 412:
                raise
            await self._check_same_as_existing(stored)
        return stored

    async def _put_multipart(self, key: str, stream: BinaryIO, parts: list[bytes]) -> StoredArtifact:
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self.prefix + key)
        upload_id = upload["UploadId"]
        completed = False
        try:
            done, stored = await self._upload_parts(key, upload_id, stream, parts)
            check_digest(key, stored.sha256)
            try:
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                    IfNoneMatch="*",
                )
                completed = True
            except ClientError as exc:
                if _status(exc) != 412:
                    raise
        finally:
            if not completed:
                # Shielded: a cancelled put must still take its parts away.
                with anyio.CancelScope(shield=True):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id
                    )
        if not completed:  # the key existed: 412 at completion
            await self._check_same_as_existing(stored)
        return stored

    async def _upload_parts(
        self, key: str, upload_id: str, stream: BinaryIO, parts: list[bytes]
    ) -> tuple[list[dict[str, Any]], StoredArtifact]:
        """Upload `parts`, then the rest of the stream part by part; hash what went up."""
        digest = hashlib.sha256()
        size = 0
        done: list[dict[str, Any]] = []
        while parts:
            part = parts.pop(0)
            digest.update(part)
            size += len(part)
            number = len(done) + 1
            response = await self.client.upload_part(
                Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id, PartNumber=number, Body=part
            )
            done.append({"ETag": response["ETag"], "PartNumber": number})
            if not parts and (following := await self._read_part(stream)):
                parts.append(following)
        return done, StoredArtifact(key, digest.hexdigest(), size)

    async def _check_same_as_existing(self, stored: StoredArtifact) -> None:
        digest = hashlib.sha256()
        body = await self._body(stored.key)
        async with body:
            async for chunk in body.iter_chunks(CHUNK_BYTES):
                digest.update(chunk)
        if digest.hexdigest() != stored.sha256:
            raise ArtifactExists(stored.key)

    async def _body(self, key: str) -> Any:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                raise ArtifactMissing(key, f"no such object in s3://{self.bucket}/{self.prefix}") from None
            raise
        return response["Body"]

    # Last in the class: below it, `list` in an annotation would name this method, not the builtin.
    async def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(keys)


def _status(exc: ClientError) -> int | None:
    status: int | None = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status
