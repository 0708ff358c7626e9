"""The dataset catalog."""

from __future__ import annotations

from fastapi import APIRouter, status

from insitu import objectstore
from insitu.api.deps import CurrentUser, SessionDep, SettingsDep
from insitu.api.schemas import DatasetCreate, DatasetPublic, DatasetsPublic
from insitu.db import queries
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
        description=body.description,
        storage_options=objectstore.platform_options(settings, body.url),
    )
    return DatasetPublic.of(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, user: CurrentUser) -> DatasetsPublic:
    """The datasets in the catalog."""
    rows = [DatasetPublic.of(d) for d in queries.list_datasets(session)]
    return DatasetsPublic(data=rows, count=len(rows))


@router.get("/{name:path}", response_model=DatasetPublic)
def show_dataset(name: str, session: SessionDep, user: CurrentUser) -> DatasetPublic:
    """One dataset: its arrays, shapes, dtypes, chunks and axes."""
    return DatasetPublic.of(queries.dataset_by_name(session, name))
