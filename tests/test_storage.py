"""Opening stores by URL: which reader serves which options, and errors that name the URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from insitu.errors import InvalidInput, StoreUnreachable
from insitu.storage import NamedObjectStore, obstore_config, open_store

ENDPOINT = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}}


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def test_s3fs_options_translate_to_obstore() -> None:
    options = {**ENDPOINT, "key": "AK", "secret": "SK", "token": "TOKEN"}
    assert obstore_config(options) == {
        "access_key_id": "AK",
        "secret_access_key": "SK",
        "session_token": "TOKEN",
        "endpoint": "http://127.0.0.1:9",
        "region": "eu-west-1",
    }
    assert obstore_config({"anon": True}) == {"skip_signature": True}


def test_options_only_s3fs_understands_fall_back_to_fsspec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert obstore_config({"profile": "lab"}) is None
    assert obstore_config({"config_kwargs": {"max_pool_connections": 50}}) is None
    store = open_store("s3://bucket/x.zarr", storage_options={"profile": "lab", **ENDPOINT})
    assert isinstance(store, zarr.storage.FsspecStore)
    # Keys only in a shared credentials file: s3fs reads those, obstore cannot.
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = B\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    assert obstore_config(ENDPOINT) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    assert obstore_config(ENDPOINT) is not None


def test_s3_urls_open_through_obstore_with_plain_http_allowed() -> None:
    store = open_store(
        "s3://bucket/data/x.zarr", storage_options={**ENDPOINT, "key": "a", "secret": "b"}
    )
    assert isinstance(store, NamedObjectStore) and str(store) == "s3://bucket/data/x.zarr"
    with pytest.raises(
        StoreUnreachable, match=r"cannot open the store at s3://bucket/data/x\.zarr"
    ):
        open_store("s3://bucket/data/x.zarr", storage_options={**ENDPOINT, "key": "a"})


def test_an_unreachable_store_is_one_line_naming_the_url() -> None:
    store = open_store(
        "s3://bucket/x.zarr", storage_options={**ENDPOINT, "key": "a", "secret": "b"}
    )
    with pytest.raises(StoreUnreachable, match=r"cannot read s3://bucket/x.zarr/") as error:
        zarr.open_array(store=store, mode="r")
    assert "\n" not in str(error.value)


def test_local_paths_and_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(StoreUnreachable, match="does not exist"):
        open_store(str(tmp_path / "missing.zarr"))
    with pytest.raises(InvalidInput, match="scheme 'ftp' is not supported"):
        open_store("ftp://host/x.zarr")
