"""Expiring published results when their time comes: the operator deletes S3 objects (STORAGE_EXPIRY)
and unpins IPFS content on a kubo node (IPFS_EXPIRY_TIME), since neither store does it by itself: an S3
bucket needs a lifecycle rule per retention period, and a kubo node has no pin expiry at all. An
ipfs-cluster (IPFS_TYPE=CLUSTER) expires its pins itself, so its URLs are left to it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ocean_c2d.settings import PublishSettings
from ocean_c2d.storage.ipfs import cid_from_url, kubo_client, unpin_expired
from ocean_c2d.storage.s3 import key_from_url, make_client

log = logging.getLogger("ocean_c2d")


async def expire_results(urls: tuple[str, ...], publish: PublishSettings) -> list[str]:
    """Delete or unpin each result; returns what could not be expired (unknown store), for the log.
    Errors of a store propagate, so the caller tries again later."""
    leftovers: list[str] = []
    cids: list[str] = []
    keys: list[str] = []
    for url in urls:
        cid = cid_from_url(url, publish.ipfs_output_prefix) if publish.ipfs_output else None
        key = (
            key_from_url(url, publish.aws_bucket_output, publish.aws_endpoint_url, publish.aws_region)
            if publish.aws_bucket_output
            else None
        )
        if cid and publish.ipfs_type != "CLUSTER":
            cids.append(cid)
        elif key:
            keys.append(key)
        elif not cid:
            leftovers.append(url)
    if cids and publish.ipfs_output:
        client = kubo_client(publish.ipfs_output, publish.ipfs_api_key, publish.ipfs_api_client)
        try:
            await unpin_expired(client, [(cid, 0.0) for cid in dict.fromkeys(cids)], time.time())
        finally:
            await client.close()
    if keys and publish.aws_bucket_output:
        client = make_client(
            publish.aws_region,
            publish.aws_endpoint_url,
            publish.aws_access_key_id,
            publish.aws_secret_access_key,
        )
        for key in keys:
            await asyncio.to_thread(client.delete_object, Bucket=publish.aws_bucket_output, Key=key)
    return leftovers
