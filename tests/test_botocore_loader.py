"""storage/botocore_loader: the session the S3 storage builds its client from knows the
same services and models as botocore's own, without listing them all to load one."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import UnknownServiceError
from botocore.loaders import Loader

from pgbackup.storage.botocore_loader import botocore_session


def test_an_s3_client_loads_the_same_model_without_listing_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed: list[str] = []
    real = Loader.list_available_services

    def counted(self: Loader, type_name: str) -> list[str]:
        listed.append(type_name)
        return real(self, type_name)  # type: ignore[no-any-return]

    monkeypatch.setattr(Loader, "list_available_services", counted)
    session = boto3.session.Session(
        botocore_session=botocore_session(), profile_name=None, region_name="us-east-1"
    )
    client = session.client("s3", endpoint_url="http://127.0.0.1:9")
    assert listed == []
    reference = boto3.session.Session(region_name="us-east-1").client(
        "s3", endpoint_url="http://127.0.0.1:9"
    )
    assert listed  # botocore's own session lists them all
    assert client.meta.service_model.api_version == reference.meta.service_model.api_version
    assert sorted(client.meta.service_model.operation_names) == sorted(
        reference.meta.service_model.operation_names
    )
    # another service (an assumed role's credentials need STS) is still known
    assert session.client("sts").meta.service_model.service_name == "sts"


def test_an_unknown_service_is_still_refused_with_the_names_botocore_knows() -> None:
    session = boto3.session.Session(botocore_session=botocore_session(), region_name="us-east-1")
    with pytest.raises(UnknownServiceError) as raised:
        session.client("no-such-service")
    assert "s3" in str(raised.value) and "sts" in str(raised.value)
    assert "s3" in session.get_available_services()
