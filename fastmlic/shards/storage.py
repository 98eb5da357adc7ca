"""Shard sets beyond the local disk: `data.shards` (and make_shards' --out) may be `s3://bucket/prefix` or
`http(s)://host/prefix` as well as a folder.

What the readers need from a location is small: whole small objects (SPLIT.json, the DALI indexes), the
size of every object a split lists (one listing on S3, a HEAD each over HTTP), and byte ranges of a tar
(the members of one sample, found through its index). Writing is S3's alone: finished files are uploaded
in the order a local build renames them into place, shards, then their indexes, then SPLIT.json, so a
reader never sees a split whose files are not all there.

Credentials and the endpoint come from AWS's own places (AWS_ACCESS_KEY_ID ..., ~/.aws, an instance role;
AWS_ENDPOINT_URL for an S3-compatible server), never from our config. Every failure names the URL and the
HTTP status, or says that the server did not answer within FASTMLIC_URL_TIMEOUT seconds (default 60).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import InputError, MissingInput

SCHEMES = ("s3://", "http://", "https://")
RETRIES = 3  # attempts per request where the failure may pass (a timeout, 5xx, a dropped connection)


class StorageError(InputError):
    """A request that failed: the message names the URL and the HTTP status, or the timeout."""


class ObjectMissing(MissingInput, StorageError):
    """404: the object is not at that URL."""


def is_url(location: str | Path) -> bool:
    return str(location).startswith(SCHEMES)


def join(root: str | Path, *names: str) -> str | Path:
    """`root/name/...`: a Path for a folder, a string for a URL (Path would fold its '//')."""
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *(n.strip("/") for n in names)])
    return Path(root).joinpath(*names)


def split_location(location: str | Path) -> tuple[str | Path, str]:
    """(parent, name) of a file's location."""
    if is_url(location):
        parent, _, name = str(location).rstrip("/").rpartition("/")
        return parent, name
    return Path(location).parent, Path(location).name


def timeout_s() -> float:
    value = os.environ.get("FASTMLIC_URL_TIMEOUT", "60")
    try:
        return float(value)
    except ValueError:
        raise InputError(f"FASTMLIC_URL_TIMEOUT={value!r}: expected a number of seconds") from None


class Store:
    """A folder of objects under a URL prefix; picklable (DataLoader workers each make their own
    connection)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def sizes(self, names: list[str]) -> dict[str, int | None]:
        """Each object's size in bytes, None where it is not there."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise StorageError(f"{self.url(name)}: cannot delete over {self.root.split(':')[0]}")

    def upload(self, path: Path, name: str) -> None:
        raise StorageError(f"{self.url(name)}: cannot write over {self.root.split(':')[0]}; "
                           f"write shards to s3:// or a folder")  # fmt: skip


class S3Store(Store):
    def __init__(self, root: str):
        super().__init__(root)
        bucket, _, prefix = self.root[len("s3://") :].partition("/")
        if not bucket:
            raise InputError(f"{root}: an S3 location is s3://BUCKET/PREFIX")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client = None

    def __getstate__(self):  # a boto3 client does not cross process boundaries
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise InputError(f"{self.root}: s3:// needs boto3: pip install 'fastmlic[s3]'") from None
            t = timeout_s()
            retries = {"max_attempts": RETRIES, "mode": "standard"}
            config = Config(connect_timeout=t, read_timeout=t, retries=retries)
            self._client = boto3.client("s3", config=config)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str) -> bytes:
        return self._get(name)

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        return self._get(name, f"bytes={offset}-{offset + size - 1}")

    def _get(self, name: str, byte_range: str | None = None) -> bytes:
        extra = {"Range": byte_range} if byte_range else {}
        with self._explained(name):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name), **extra)["Body"].read()

    def sizes(self, names: list[str]) -> dict[str, int | None]:
        found: dict[str, int] = {}
        start = f"{self.prefix}/" if self.prefix else ""
        with self._explained(""):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(start) :]] = obj["Size"]
        return {n: found.get(n) for n in names}

    def upload(self, path: Path, name: str) -> None:
        # a multipart upload becomes visible only when complete, and boto3 aborts it on failure: an
        # interrupted upload leaves no partial object behind
        with self._explained(name):
            self.client.upload_file(str(path), self.bucket, self.key(name))

    def delete(self, name: str) -> None:
        with self._explained(name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def _explained(self, name: str):
        return _S3Errors(self.url(name) if name else f"{self.root}/")


class _S3Errors:
    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(error, ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.response.get("Error", {}).get("Code", "")
            missing = status == 404 or code in ("NoSuchKey", "NoSuchBucket", "404")
            cls = ObjectMissing if missing else StorageError
            hint = {403: " (access denied: check the AWS credentials and the bucket's policy)",
                    404: " (not found)"}.get(status, "")  # fmt: skip
            raise cls(f"{self.url}: HTTP {status} {code}{hint}") from None
        if isinstance(error, NoCredentialsError):
            raise StorageError(f"{self.url}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                               f"AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials)") from None
        if isinstance(error, BotoCoreError):
            raise StorageError(f"{self.url}: {error} (after {RETRIES} attempts, {timeout_s():g} s "
                               f"timeout; check the endpoint, AWS_ENDPOINT_URL and the network)") from None
        return False


class HttpStore(Store):
    """Any web server or object store that serves files and answers Range requests (206)."""

    def read(self, name: str) -> bytes:
        return self._request(name)[1]

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        status, data = self._request(name, {"Range": f"bytes={offset}-{offset + size - 1}"})
        if status != 206:  # the whole file came back: at shard sizes, unusable as random access
            raise StorageError(f"{self.url(name)}: the server ignores Range requests (HTTP {status}, not "
                               f"206); serve the shards from one that answers them, or copy them locally")
        return data

    def sizes(self, names: list[str]) -> dict[str, int | None]:
        def size(name: str) -> int | None:
            try:
                status, headers = self._request(name, method="HEAD")
            except ObjectMissing:
                return None
            return int(headers.get("Content-Length", -1))

        with ThreadPoolExecutor(8) as pool:
            return dict(zip(names, pool.map(size, names), strict=True))

    def _request(self, name: str, headers: dict | None = None, method: str = "GET"):
        """(status, body) of a GET, (status, headers) of a HEAD; errors name the URL."""
        url = self.url(name)
        request = urllib.request.Request(url, headers=headers or {}, method=method)
        for attempt in range(RETRIES):
            try:
                with urllib.request.urlopen(request, timeout=timeout_s()) as response:
                    return response.status, (response.headers if method == "HEAD" else response.read())
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    raise ObjectMissing(f"{url}: HTTP 404 (not found)") from None
                if e.code < 500 or attempt == RETRIES - 1:
                    raise StorageError(f"{url}: HTTP {e.code} {e.reason}") from None
            except TimeoutError:
                if attempt == RETRIES - 1:
                    raise StorageError(f"{url}: no answer within {timeout_s():g} s ({RETRIES} attempts; "
                                       f"FASTMLIC_URL_TIMEOUT sets the limit)") from None  # fmt: skip
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if attempt == RETRIES - 1:
                    raise StorageError(f"{url}: cannot connect ({reason}; {RETRIES} attempts)") from None
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")


def open_store(root: str | Path) -> Store:
    """The store under a URL prefix."""
    text = str(root)
    if text.startswith("s3://"):
        return S3Store(text)
    if text.startswith(("http://", "https://")):
        return HttpStore(text)
    raise ValueError(f"{root}: not a URL ({', '.join(SCHEMES)})")
