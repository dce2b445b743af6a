"""A botocore session that opens an S3 client without listing every service botocore knows.

Before it loads a model (``load_service_model``: the S3 service model, then its endpoint
rules), botocore's data loader lists the names of all the services it has data for, to
raise ``UnknownServiceError`` with them should the one asked for be missing: a walk of
~420 directories and ~2,900 ``stat`` calls for each of two model types, ~20 ms of the
~100 ms an S3 client takes to build here (botocore 1.44; medians of six fresh processes
each way: 0.101 s and 0.082 s). botocore's own pull request
#3687 (open) drops that listing from the successful path; until it lands, this loader
answers "is this service known" by looking in that service's directory only, and lists
them all only when asked to list them (the error message, ``get_available_services``).

It matters where a process opens one client and makes a few requests: wal-push and
wal-fetch to S3 (one process per segment), and the read-ahead's prefetcher, whose opening
is what PostgreSQL's first ``restore_command`` waits for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader, create_loader
from botocore.session import Session


class _ServiceNames(Sequence[str]):
    """The services botocore has ``type_name`` data for: a membership test looks in one
    service's directory; anything else lists them all, as botocore does."""

    def __init__(self, loader: Loader, type_name: str) -> None:
        self._loader, self._type_name = loader, type_name
        self._names: list[str] | None = None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self._loader.list_api_versions(name, self._type_name)
        except DataNotFoundError:
            return False
        return True

    def _all(self) -> list[str]:
        if self._names is None:
            self._names = list(Loader.list_available_services(self._loader, self._type_name))
        return self._names

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())


class _Loader(Loader):  # type: ignore[misc]  # botocore has no type hints
    def list_available_services(self, type_name: str) -> Sequence[str]:
        return _ServiceNames(self, type_name)


def botocore_session(profile: str | None = None) -> Any:
    """A botocore session as boto3 would make it (``profile``: an AWS profile's name, as
    boto3's ``profile_name``), with the loader above: the same search paths
    (``AWS_DATA_PATH``, ``~/.aws/models``, botocore's own data), the same models."""
    session = Session(profile=profile)
    default = create_loader(session.get_config_variable("data_path"))
    loader = _Loader(
        extra_search_paths=list(default.search_paths), include_default_search_paths=False
    )
    session.register_component("data_loader", loader)
    return session
