"""Removing published results when their record says so: the operator deletes S3 objects (STORAGE_EXPIRY,
or a publish that failed) and unpins IPFS content on a kubo node (IPFS_EXPIRY_TIME), since neither store
does it by itself: an S3 bucket needs a lifecycle rule per retention period, and a kubo node has no pin
expiry at all. An ipfs-cluster (IPFS_TYPE=CLUSTER) expires its pins itself, so it is left to it.

What to remove comes from a results record (retention.py), never from URLs a pod reported: on S3 every
object under the Workflow's own key prefix "<namespace>/<name>/<uid>/" (listed, so a half-finished
upload and the results manifest go too, and nothing of another Workflow can), on IPFS the CIDs of its
result list that no other live record still names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ocean_c2d.retention import ResultRecord, unpinnable
from ocean_c2d.settings import PublishSettings
from ocean_c2d.storage.ipfs import kubo_client, unpin_expired
from ocean_c2d.storage.s3 import make_client

log = logging.getLogger("ocean_c2d")

DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects request takes
# The operator's own requests to the stores: a store that accepts connections and never answers must not
# hold it (ResultExpiry bounds a whole removal too). S3: boto3's two attempts of at most 10 s to connect and
# 20 s without a byte each; IPFS: 30 s a request, connecting included.
S3_READ_TIMEOUT = 20.0
S3_ATTEMPTS = 2
IPFS_TIMEOUT = 30.0


async def remove_results(
    record: ResultRecord, others: Iterable[ResultRecord], publish: PublishSettings
) -> tuple[int, int]:
    """Delete the record's S3 objects and unpin its unshared CIDs; (objects deleted, CIDs unpinned).
    Errors of a store propagate, so the caller tries again later."""
    deleted = unpinned = 0
    if record.s3_prefix and record.s3_bucket:
        if record.s3_bucket == publish.aws_bucket_output:
            deleted = await _delete_prefix(record.s3_bucket, record.s3_prefix, publish)
        else:
            log.warning(
                "Cannot remove the results of %s/%s from bucket %s: the operator's bucket is now %s",
                record.namespace,
                record.workflow,
                record.s3_bucket,
                publish.aws_bucket_output,
            )
    cids = unpinnable(record, others)
    kept = len(record.cids) - len(cids)
    if kept:
        log.info("Kept %d CIDs of %s/%s pinned: other results records name them", kept, *_who(record))
    if cids and publish.ipfs_output and publish.ipfs_type != "CLUSTER":
        client = kubo_client(
            publish.ipfs_output, publish.ipfs_api_key, publish.ipfs_api_client, timeout=IPFS_TIMEOUT
        )
        try:
            unpinned = len(await unpin_expired(client, [(cid, 0.0) for cid in cids], time.time()))
        finally:
            await client.close()
    return deleted, unpinned


def _who(record: ResultRecord) -> tuple[str, str]:
    return record.namespace, record.workflow


async def _delete_prefix(bucket: str, prefix: str, publish: PublishSettings) -> int:
    client = make_client(
        publish.aws_region,
        publish.aws_endpoint_url,
        publish.aws_access_key_id,
        publish.aws_secret_access_key,
        read_timeout=S3_READ_TIMEOUT,
        max_attempts=S3_ATTEMPTS,
    )
    try:
        return await asyncio.to_thread(delete_prefix, client, bucket, prefix)
    finally:
        await asyncio.to_thread(client.close)


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object whose key starts with `prefix` (a boto3 S3 client; blocking). Returns how
    many were deleted. A key that fails to delete raises, so the whole removal is tried again."""
    if not prefix.endswith("/"):
        raise ValueError(f"a results prefix ends with '/': {prefix!r}")  # never delete a sibling's keys
    count = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [item["Key"] for item in page.get("Contents") or []]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            answer = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = answer.get("Errors") or []
            if errors:
                raise RuntimeError(
                    f"S3 refused to delete {len(errors)} objects, e.g. {errors[0].get('Code')}"
                )
            count += len(batch)
    return count
