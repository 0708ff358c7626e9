"""The dataset catalog."""

from __future__ import annotations

from fastapi import APIRouter, status

from insitu import objectstore
from insitu.api.deps import CurrentUser, SessionDep, SettingsDep
from insitu.api.schemas import DatasetCreate, DatasetPublic, DatasetsPublic, GrantCreate
from insitu.services import datasets

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


@router.get("/{name:path}", response_model=DatasetPublic)
def show_dataset(name: str, session: SessionDep, user: CurrentUser) -> DatasetPublic:
    """One dataset: its arrays, shapes, dtypes, chunks and axes."""
    return DatasetPublic.of(datasets.visible(session, user, name))
