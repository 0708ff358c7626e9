"""Register datasets in the catalog and look them up."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from insitu.catalog import DatasetInfo, inspect_store
from insitu.db import queries
from insitu.db.models import Dataset, User
from insitu.errors import Conflict, InvalidInput, NotFound
from insitu.services import access, url_roots
from insitu.spec import DATASET_NAME, MAX_DATASET_NAME


def register(
    session: Session,
    owner: User,
    name: str,
    url: str,
    *,
    access_rule: str = access.PRIVATE,
    description: str | None = None,
    storage_options: dict[str, Any] | None = None,
    same_url_ok: bool = False,
) -> Dataset:
    """Inspect the store at ``url`` and add it to the catalog as ``name`` (commits).

    The URL must lie under a root an admin allowed the caller (checked before the store
    is touched, so the answer tells nothing about what lies outside), and may be in the
    catalog only once unless ``same_url_ok``.
    """
    access.require_role(owner, access.CURATORS, "register datasets")
    rule = access.parse_access(access_rule)
    if not DATASET_NAME.match(name) or len(name) > MAX_DATASET_NAME:
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
    target = url_roots.require_allowed(session, owner, url)
    if not same_url_ok:
        for other in queries.list_datasets(session):
            if url_roots.canonical(other.url) == target:
                raise Conflict(
                    f"{target} is registered already, as dataset {other.name!r}; register it "
                    "again only on purpose (same_url_ok, or --same-url-ok on the command line)"
                )
    info = inspect_store(target, storage_options)
    dataset = Dataset(
        name=name,
        url=info.url,
        format=info.format,
        version=info.version,
        info=info.model_dump(mode="json"),
        access=rule,
        description=description,
        owner_id=owner.id,
    )
    session.add(dataset)
    session.flush()
    queries.add_audit(session, owner, "dataset.register", name, detail=f"{info.url} ({rule})")
    session.commit()
    return dataset


def readable(session: Session, user: User) -> list[Dataset]:
    """The catalog as ``user`` may see it (one query for their grants, not one per dataset)."""
    granted = queries.granted_dataset_ids(session, user)
    return [
        d
        for d in queries.list_datasets(session)
        if (d.id in granted or access.allowed_by_rule(user, d))
        and (d.source_job_id is None or access.can_read(session, user, d))
    ]


def visible(session: Session, user: User, name: str) -> Dataset:
    """One dataset ``user`` may read, or :class:`NotFound` / :class:`PermissionDenied`."""
    dataset = queries.dataset_by_name(session, name)
    access.require_read(session, user, dataset)
    return dataset


def grant(session: Session, by: User, name: str, user_name: str) -> Dataset:
    """Let a user read a dataset whatever its access rule (commits)."""
    dataset = queries.dataset_by_name(session, name)
    access.require_curator_of(by, dataset, f"grant access to {name!r}")
    user = queries.user_named(session, user_name)
    queries.grant(session, dataset, user, by.name)
    queries.add_audit(session, by, "dataset.grant", name, detail=f"to {user.name}")
    session.commit()
    return dataset


def info_of(dataset: Dataset) -> DatasetInfo:
    """The stored description of a dataset's arrays."""
    return DatasetInfo.model_validate(dataset.info)
