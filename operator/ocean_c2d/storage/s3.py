"""Results in an S3 bucket (AWS, or any S3 API such as versitygw or MinIO).

Layout: one object per file, key "<prefix>/<path relative to the volume>" where the prefix is the
operator's RESULTS_PREFIX, "<namespace>/<workflow name>/<workflow uid>" (else WORKFLOWID), e.g.
"c2d/job1/<uid>/outputs/plots/a.png", "c2d/job1/<uid>/adminlogs/publish.log" (the original used
"<jobId>/data/outputs/x"; the "/data" part said nothing). The URL is the plain object URL: path style
"<endpoint>/<bucket>/<key>" with AWS_ENDPOINT_URL, else AWS's "https://<bucket>.s3.<region>.amazonaws.com/
<key>", as the original's `upload().Location`. Nothing is presigned, so the bucket (or a gateway in front
of it) must let operator-service read the objects.

Expiry (STORAGE_EXPIRY hours, 0 = never): each object gets
- the `Expires` header: an HTTP caching hint only, S3 deletes nothing because of it;
- the tags "ocean-c2d-expires=<unix time>" (when it is due, for a sweep or an audit) and
  "ocean-c2d-retention-days=<days>" (STORAGE_EXPIRY rounded up to whole days).
The bucket is what deletes them: a lifecycle rule cannot compare a tag's value with the time, but it can
match a fixed tag, so the bucket owner adds one rule per retention in use, e.g.
    {"ID": "ocean-c2d-1d", "Status": "Enabled",
     "Filter": {"Tag": {"Key": "ocean-c2d-retention-days", "Value": "1"}}, "Expiration": {"Days": 1}}
This step never writes the bucket's lifecycle configuration: that is the bucket owner's (it replaces
the whole configuration, and the step's credentials should only be allowed to put objects).

Large files go up in 16 MiB parts (boto3's managed transfer); the blocking boto3 calls run in a thread.
"""

from __future__ import annotations

import asyncio
import math
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import boto3  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ocean_c2d.resilience import is_transient_status
from ocean_c2d.storage import UploadError, describe_failure

MIB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MIB
EXPIRES_TAG = "ocean-c2d-expires"
RETENTION_TAG = "ocean-c2d-retention-days"
DEFAULT_REGION = "us-east-1"
# The publish step's uploads: one boto3 attempt each (the step's RetryPolicy owns retries: 5 attempts, not
# 5 x boto3's 3), failed after 10 s without a connection or 120 s without a byte, so a store that hangs
# fails the step in about 11 minutes with ResultsUploadFailed, well inside PUBLISH_TIMEOUT_SECONDS.
UPLOAD_READ_TIMEOUT = 120.0
UPLOAD_ATTEMPTS = 1
# Error codes S3 APIs answer when trying again later may work (besides the transient HTTP statuses).
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "RequestTimeTooSkewed",
    }
)


def s3_key(workflow_id: str, name: str) -> str:
    """The object key of `name` (a path relative to the volume): "<prefix>/<name>"."""
    return f"{workflow_id}/{name.lstrip('/')}"


def object_url(bucket: str, key: str, endpoint_url: str | None, region: str | None) -> str:
    """The plain (unsigned) URL of an object: path style on a custom endpoint, AWS's virtual-host
    style otherwise. The key is percent-encoded except for its slashes."""
    quoted = quote(key, safe="/")
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{quoted}"
    return f"https://{bucket}.s3.{region or DEFAULT_REGION}.amazonaws.com/{quoted}"


def make_client(
    region: str | None,
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    *,
    session_token: str | None = None,
    default_region: str | None = DEFAULT_REGION,
    read_timeout: float = 120,
    max_attempts: int = 3,
    addressing_style: str | None = None,
) -> Any:
    """The boto3 S3 client of the publish step, the operator's expiry and the configure step's s3:// inputs.

    Credentials: the given keys (and session token), else boto3's own chain (a web identity, an instance
    profile). Region: `region`, else `default_region` (None: boto3's chain). A custom (S3-compatible)
    endpoint is always addressed path-style; AWS as `addressing_style` says (None: as boto3's
    configuration says). boto3 retries in "standard" mode, `max_attempts` attempts in all."""
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region or default_region,
    )
    style = "path" if endpoint_url else addressing_style
    config = Config(
        connect_timeout=10,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},  # attempts in all
        s3={"addressing_style": style} if style else {},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def key_from_url(url: str, bucket: str, endpoint_url: str | None, region: str | None) -> str | None:
    """The object key of a URL that `object_url` made for `bucket`, else None (not ours)."""
    start = object_url(bucket, "", endpoint_url, region)
    if not url.startswith(start):
        return None
    return unquote(url[len(start) :]) or None


def expires_at(now: float, expiry_hours: int) -> int | None:
    """The Unix time objects uploaded `now` expire at; None when STORAGE_EXPIRY is 0 (never)."""
    return int(now) + expiry_hours * 3600 if expiry_hours > 0 else None


def expiry_args(expiry_hours: int, expires: int | None) -> dict[str, Any]:
    """The PutObject / CreateMultipartUpload arguments that mark an object's expiry (none for never)."""
    if expires is None or expiry_hours <= 0:
        return {}
    tags = {EXPIRES_TAG: str(expires), RETENTION_TAG: str(math.ceil(expiry_hours / 24))}
    return {"Expires": datetime.fromtimestamp(expires, UTC), "Tagging": urlencode(tags)}


def upload_args(name: str, expiry_hours: int, expires: int | None) -> dict[str, Any]:
    """All the extra arguments of one upload: a content type (so browsers show a result sensibly), and
    the expiry marks."""
    content_type, _ = mimetypes.guess_type(name)
    args: dict[str, Any] = {"ContentType": content_type or "application/octet-stream"}
    args.update(expiry_args(expiry_hours, expires))
    return args


def classify(error: BaseException) -> UploadError:
    """A boto3 / botocore failure as an UploadError: a message without secrets, and whether it is
    worth trying again. boto3's managed transfer wraps a ClientError in S3UploadFailedError (as its
    context), so the chain is searched."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ClientError):
            info = seen.response.get("Error", {})
            code = str(info.get("Code", "unknown"))
            status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            transient = code in TRANSIENT_CODES or is_transient_status(status)
            return UploadError(f"{code} (HTTP {status})" if status else code, transient=transient)
        if isinstance(seen, NoCredentialsError | PartialCredentialsError):
            return UploadError("no usable S3 credentials", transient=False)
        if isinstance(seen, BotoConnectionError | HTTPClientError):
            return UploadError(describe_failure(seen), transient=True)
        seen = seen.__cause__ or seen.__context__
    return UploadError(describe_failure(error), transient=True)


class S3Destination:
    """Uploads to one bucket under "<workflow_id>/". Credentials: the given keys, else boto3's own
    chain (a web identity, an instance profile)."""

    def __init__(
        self,
        *,
        bucket: str,
        workflow_id: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        expiry_hours: int = 0,
        now: float,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.workflow_id = workflow_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.expiry_hours = expiry_hours
        self._expires = expires_at(now, expiry_hours)
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )
        self._client = client or make_client(
            region,
            endpoint_url,
            access_key_id,
            secret_access_key,
            read_timeout=UPLOAD_READ_TIMEOUT,
            max_attempts=UPLOAD_ATTEMPTS,
        )

    @property
    def description(self) -> str:
        where = urlsplit(self.endpoint_url).netloc.rsplit("@", 1)[-1] if self.endpoint_url else "AWS"
        return f"s3://{self.bucket}/{self.workflow_id}/ ({where})"

    @property
    def expires_at(self) -> int | None:
        return self._expires

    async def upload(self, path: Path, name: str) -> str:
        key = s3_key(self.workflow_id, name)
        extra = upload_args(name, self.expiry_hours, self._expires)
        try:
            await asyncio.to_thread(
                self._client.upload_file,
                str(path),
                self.bucket,
                key,
                ExtraArgs=extra,
                Config=self._transfer,
            )
        except Exception as error:
            raise classify(error) from error
        return object_url(self.bucket, key, self.endpoint_url, self.region)

    async def delete(self, name: str) -> None:
        """Remove `name`: a publish that failed half-way takes back what it had uploaded."""
        try:
            await asyncio.to_thread(
                self._client.delete_object, Bucket=self.bucket, Key=s3_key(self.workflow_id, name)
            )
        except Exception as error:
            raise classify(error) from error

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
