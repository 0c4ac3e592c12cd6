"""A real S3-compatible server for the tests: moto's standalone server (``python -m moto.server``) as its
own process on a free loopback port, started once per session, and a fresh bucket per test.

Without moto installed the S3 tests skip, unless ``CONVEYOR_REQUIRE_BACKENDS=1`` (``.ci/run``), which makes
that a failure.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.support import unavailable

#: moto accepts any credentials; the services read them from the standard variables, as on AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "conveyor-test", "AWS_SECRET_ACCESS_KEY": "conveyor-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: it is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server of this session; the AWS credential variables are set meanwhile."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed: no S3-compatible server for the S3 tests")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        try:
            deadline = time.monotonic() + 30
            while not _answers(url + "/moto-api/"):
                if process.poll() is not None:
                    pytest.fail(f"the moto server exited with {process.returncode}")
                if time.monotonic() > deadline:
                    pytest.fail("the moto server did not answer within 30 s")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def s3_url(s3_endpoint: str) -> Iterator[str]:
    """An ``s3://`` artifact store URL on a bucket of this test alone (5 MiB parts, S3's smallest)."""
    import boto3

    bucket = f"t-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/artifacts?endpoint={s3_endpoint}&part_mb=5"
    finally:
        client.close()
