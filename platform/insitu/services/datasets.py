"""Register datasets in the catalog and look them up."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from insitu.catalog import DatasetInfo, inspect_store
from insitu.db import queries
from insitu.db.models import Dataset, User
from insitu.errors import Conflict, InvalidInput, NotFound

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")


def register(
    session: Session,
    owner: User,
    name: str,
    url: str,
    *,
    description: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Dataset:
    """Inspect the store at ``url`` and add it to the catalog as ``name`` (commits)."""
    if not _NAME_RE.match(name) or len(name) > 200:
        raise InvalidInput(
            f"dataset name {name!r} is not valid; use lower-case words separated by '/', "
            "e.g. 'ophys/session-001'"
        )
    try:
        queries.dataset_by_name(session, name)
    except NotFound:
        pass
    else:
        raise Conflict(f"dataset {name!r} is already registered")
    info = inspect_store(url, storage_options)
    dataset = Dataset(
        name=name,
        url=info.url,
        format=info.format,
        version=info.version,
        info=info.model_dump(mode="json"),
        description=description,
        owner_id=owner.id,
    )
    session.add(dataset)
    session.commit()
    return dataset


def info_of(dataset: Dataset) -> DatasetInfo:
    """The stored description of a dataset's arrays."""
    return DatasetInfo.model_validate(dataset.info)
