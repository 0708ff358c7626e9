"""The dataset catalog."""

from __future__ import annotations

from fastapi import APIRouter, status

from insitu import objectstore
from insitu.api.deps import CurrentUser, SessionDep, SettingsDep
from insitu.api.schemas import (
    AccessChange,
    DatasetCreate,
    DatasetPublic,
    DatasetsPublic,
    GrantCreate,
    LineagePublic,
)
from insitu.services import datasets, derived

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=DatasetPublic, status_code=status.HTTP_201_CREATED)
def register_dataset(
    body: DatasetCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> DatasetPublic:
    """Register a Zarr or OME-Zarr store under a catalog name, reading its arrays."""
    dataset = datasets.register(
        session,
        user,
        body.name,
        body.url,
        access_rule=body.access,
        description=body.description,
        storage_options=objectstore.platform_options(settings, body.url),
        same_url_ok=body.same_url_ok,
    )
    return DatasetPublic.of(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, user: CurrentUser) -> DatasetsPublic:
    """The datasets in the catalog that you may read."""
    rows = [DatasetPublic.of(d) for d in datasets.readable(session, user)]
    return DatasetsPublic(data=rows, count=len(rows))


@router.post("/{name:path}/grants", response_model=DatasetPublic)
def grant_dataset(
    name: str, body: GrantCreate, session: SessionDep, user: CurrentUser
) -> DatasetPublic:
    """Let a user read a dataset whatever its access rule (its owner or an admin)."""
    return DatasetPublic.of(datasets.grant(session, user, name, body.user))


@router.get("/{name:path}/lineage", response_model=LineagePublic)
def dataset_lineage(name: str, session: SessionDep, user: CurrentUser) -> LineagePublic:
    """A dataset and its ancestors, nearest first: what each was derived from, and how."""
    return LineagePublic(data=derived.lineage_chain(session, user, name))


@router.post("/{name:path}/release", response_model=DatasetPublic)
def release_dataset(name: str, session: SessionDep, user: CurrentUser) -> DatasetPublic:
    """Let a derived dataset's own access rule alone decide who reads it (its parents'
    owner or an admin)."""
    return DatasetPublic.of(derived.release(session, user, name))


@router.put("/{name:path}/access", response_model=DatasetPublic)
def change_access(
    name: str, body: AccessChange, session: SessionDep, user: CurrentUser
) -> DatasetPublic:
    """Change a dataset's access rule (its owner or an admin); a derived dataset stays
    no more open than its parents unless they released it."""
    return DatasetPublic.of(derived.set_access(session, user, name, body.access))


@router.delete("/{name:path}", response_model=DatasetPublic)
def delete_dataset(
    name: str, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> DatasetPublic:
    """Delete a derived dataset and its data (its owner or an admin)."""
    return DatasetPublic.of(derived.delete(session, settings, user, name))


@router.get("/{name:path}", response_model=DatasetPublic)
def show_dataset(name: str, session: SessionDep, user: CurrentUser) -> DatasetPublic:
    """One dataset: its arrays, shapes, dtypes, chunks and axes."""
    return DatasetPublic.of(datasets.visible(session, user, name))
