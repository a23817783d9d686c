"""The media store through HTTP: signed URLs served by a real server (made by image requests with
`response_format: "url"` to a stand-in images upstream), tampered and expired signatures refused,
retention, the generated secret; and the S3 backend against moto's real local S3 server."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from infergate.storage.media import MediaSettings, MediaStore
from tests.support.images_upstream import ImagesUpstream
from tests.support.server import ServerProcess, free_port


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ImagesUpstream]:
    upstream = ImagesUpstream().start()
    yield upstream
    upstream.stop()


def catalog(base_url: str) -> str:
    return (
        f'builtins = false\n\n[[models]]\nid = "img"\nkind = "image"\nbackend = "openai"\n'
        f'base_url = "{base_url}"\nupstream_model = "img"\n'
    )


def start_server(path: Path, stand_in: ImagesUpstream, **env: str) -> ServerProcess:
    return ServerProcess(path, catalog(stand_in.base_url), env=env).start()


def image_urls(server: ServerProcess, n: int = 1) -> list[str]:
    secret = server.create_key("media")["secret_key"]
    r = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"model": "img", "prompt": "an otter", "n": n, "size": "256x256", "response_format": "url"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [d["url"] for d in r.json()["data"]]


def wait_for(condition, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(stand_in: ImagesUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("media"), stand_in)
    yield proc
    proc.stop()


def test_signed_url_serves_the_file_to_anyone_holding_it(server: ServerProcess) -> None:
    url = image_urls(server)[0]
    r = httpx.get(url)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"].startswith("private, max-age=")
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content)
    # the id is random and long: 32 URL-safe characters
    assert len(urlsplit(url).path.split("/")[2]) == 32


def test_tampered_urls_are_refused(server: ServerProcess) -> None:
    url = image_urls(server)[0]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    expires, sig = query["expires"][0], query["sig"][0]
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    for bad in (
        f"{base}?expires={expires}&sig={flipped}",  # signature changed
        f"{base}?expires={int(expires) + 3600}&sig={sig}",  # expiry pushed back
        f"{base}?expires={expires}",  # no signature
        base,
        f"{base.rsplit('/', 1)[0]}/other.png?expires={expires}&sig={sig}",  # another name
        f"{base.replace(base.split('/')[4][:4], 'zzzz', 1)}?expires={expires}&sig={sig}",  # another id
    ):
        r = httpx.get(bad)
        assert r.status_code == 403, bad
        assert r.json()["error"]["code"] == "invalid_signature"


def test_expired_urls_are_refused(stand_in: ImagesUpstream, tmp_path: Path) -> None:
    proc = start_server(tmp_path / "s", stand_in, INFERGATE_MEDIA_URL_TTL="2")
    try:
        url = image_urls(proc)[0]
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        assert expires - time.time() <= 2
        wait_for(lambda: httpx.get(url).status_code == 403)
        assert httpx.get(url).json()["error"]["code"] == "url_expired"
    finally:
        proc.stop()


def test_retention_removes_expired_files_and_the_secret_is_kept(
    stand_in: ImagesUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "s"
    proc = start_server(data, stand_in, INFERGATE_MEDIA_RETENTION="1")
    try:
        urls = image_urls(proc, n=2)
        secret_file = data / "media-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(secret_file.read_text().strip()) >= 32
        wait_for(lambda: not list((data / "media").glob("*/*")))  # files and their records swept
        assert httpx.get(urls[0]).status_code in (403, 404)
    finally:
        proc.stop()
    # a restart keeps the generated secret: URLs signed before stay valid
    proc = start_server(data, stand_in)
    try:
        secret_before = secret_file.read_text()
        url = image_urls(proc)[0]
        proc.stop()
        proc = start_server(data, stand_in)
        assert secret_file.read_text() == secret_before
        assert httpx.get(url.replace(url.split("/media/")[0], proc.url)).status_code == 200
    finally:
        proc.stop()


# -- S3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="media-bucket")
    yield endpoint
    moto.stop()


def test_s3_bucket_holds_the_files_served_at_signed_urls(
    stand_in: ImagesUpstream, s3: str, tmp_path: Path
) -> None:
    env = {
        "INFERGATE_MEDIA_S3_BUCKET": "media-bucket",
        "INFERGATE_MEDIA_S3_ENDPOINT": s3,
        "INFERGATE_MEDIA_S3_PREFIX": "gen/",
        "INFERGATE_MEDIA_SECRET": "a-shared-secret-of-replicas",
    }
    proc = start_server(tmp_path / "s", stand_in, **env)
    try:
        url = image_urls(proc)[0]
        media_id = urlsplit(url).path.split("/")[2]
        obj = boto3.client("s3", endpoint_url=s3).get_object(Bucket="media-bucket", Key=f"gen/{media_id}")
        stored = obj["Body"].read()
        assert obj["ContentType"] == "image/png" and stored.startswith(b"\x89PNG")
        r = httpx.get(url)
        assert r.status_code == 200 and r.content == stored
        assert httpx.head(url).headers["content-length"] == str(len(stored))
        assert httpx.get(url.replace("sig=", "sig=x")).status_code == 403
        assert not (tmp_path / "s" / "media").exists()  # nothing on local disk
        assert not (tmp_path / "s" / "media-secret").exists()  # the configured secret is used
    finally:
        proc.stop()


def test_s3_retention_sweep_deletes_expired_objects(s3: str, tmp_path: Path) -> None:
    settings = MediaSettings(
        retention=1,
        url_ttl=60,
        secret="x" * 32,
        public_url=None,
        s3_bucket="media-bucket",
        s3_endpoint=s3,
        s3_region="us-east-1",
        s3_prefix="sweep/",
    )
    store = MediaStore(settings, tmp_path)
    ref = asyncio.run(store.save(b"RIFF....WAVE", content_type="audio/wav", key_uuid="k1", file_name="a.wav"))
    client = boto3.client("s3", endpoint_url=s3)

    def keys() -> list[str]:
        listing = client.list_objects_v2(Bucket="media-bucket", Prefix="sweep/")
        return [o["Key"] for o in listing.get("Contents", [])]

    assert keys() == [f"sweep/{ref.id}"]
    loaded, data = asyncio.run(store.load(ref.id))
    assert (loaded.key_uuid, loaded.file_name, data) == ("k1", "a.wav", b"RIFF....WAVE")
    wait_for(lambda: time.time() > ref.expires_at)  # type: ignore[operator]
    assert asyncio.run(store.sweep()) == 1
    assert keys() == []


def test_a_store_that_cannot_save_is_a_503_not_a_500(
    stand_in: ImagesUpstream, s3: str, tmp_path: Path
) -> None:
    env = {"INFERGATE_MEDIA_S3_BUCKET": "no-such-bucket", "INFERGATE_MEDIA_S3_ENDPOINT": s3}
    proc = start_server(tmp_path / "s", stand_in, **env)
    try:
        secret = proc.create_key("media")["secret_key"]
        body = {"model": "img", "prompt": "an otter", "size": "256x256"}
        headers = {"Authorization": f"Bearer {secret}"}
        r = httpx.post(
            f"{proc.url}/v1/images/generations", json={**body, "response_format": "url"}, headers=headers
        )
        assert r.status_code == 503, r.text
        assert "media store cannot save" in r.json()["error"]["message"]
        # base64 answers need no store
        assert httpx.post(f"{proc.url}/v1/images/generations", json=body, headers=headers).status_code == 200
    finally:
        proc.stop()
