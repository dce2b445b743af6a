"""storage/botocore_loader: the session the S3 storage builds its client from knows the
same services and models as botocore's own, without listing them all to load one."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.exceptions import ProfileNotFound, UnknownServiceError
from botocore.loaders import Loader

from pgbackup.storage.botocore_loader import botocore_session

ENDPOINT = {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}


def test_an_s3_client_loads_the_same_model_without_listing_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed: list[str] = []
    real = Loader.list_available_services

    def counted(self: Loader, type_name: str) -> list[str]:
        listed.append(type_name)
        return real(self, type_name)  # type: ignore[no-any-return]

    monkeypatch.setattr(Loader, "list_available_services", counted)
    session = botocore_session()
    client = session.create_client("s3", **ENDPOINT)
    assert listed == []
    reference = botocore.session.Session().create_client("s3", **ENDPOINT)
    assert listed  # botocore's own session lists them all
    assert client.meta.service_model.api_version == reference.meta.service_model.api_version
    assert sorted(client.meta.service_model.operation_names) == sorted(
        reference.meta.service_model.operation_names
    )
    # another service (an assumed role's credentials need STS) is still known
    assert (
        session.create_client("sts", region_name="us-east-1").meta.service_model.service_name
        == "sts"
    )


def test_an_unknown_service_is_still_refused_with_the_names_botocore_knows() -> None:
    session = botocore_session()
    with pytest.raises(UnknownServiceError) as raised:
        session.create_client("no-such-service", region_name="us-east-1")
    assert "s3" in str(raised.value) and "sts" in str(raised.value)
    assert "s3" in session.get_available_services()


def test_a_profile_is_the_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pgbackup-test-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/pgbackup-test-credentials")
    with pytest.raises(ProfileNotFound):
        botocore_session("backups").create_client("s3", **ENDPOINT)


def test_an_s3_repository_with_an_unknown_profile_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgbackup.errors import StorageError
    from pgbackup.storage.s3 import S3Storage

    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pgbackup-test-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/pgbackup-test-credentials")
    with pytest.raises(StorageError) as raised:
        S3Storage("backups", endpoint_url="http://127.0.0.1:9", profile="nope")
    assert "cannot set up the S3 client for s3://backups" in str(raised.value)
    assert "nope" in str(raised.value)
