"""What runs next to the data: result encoding, the egress cap, code bundles, scoping."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from insitu.catalog import ArrayInfo
from insitu.errors import AnalysisFailed, InvalidInput, PermissionDenied, ResultTooLarge
from insitu.runtime import bundle
from insitu.runtime.context import RunContext
from insitu.runtime.results import PNG, RECORD_ALLOWANCE, check_cap, encode, png, result_cap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_arrays_round_trip_as_npy() -> None:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    encoded = encode("mean", value)
    assert (encoded.filename, encoded.kind, encoded.shape, encoded.dtype) == (
        "mean.npy",
        "array",
        [3, 4],
        "float32",
    )
    np.testing.assert_array_equal(np.load(io.BytesIO(encoded.data)), value)


def test_tables_round_trip_as_parquet() -> None:
    frame = pd.DataFrame(
        {"roi_1": [0.1, 0.2], "roi_2": [1.0, 2.0]}, index=pd.Index([5, 6], name="frame")
    )
    encoded = encode("traces", frame)
    assert encoded.filename == "traces.parquet" and encoded.kind == "table"
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(encoded.data)), frame)
    assert encode("series", frame["roi_1"]).filename == "series.parquet"


def test_json_values_with_numpy_scalars() -> None:
    encoded = encode("stats", {"n": np.int64(3), "mean": np.float32(1.5), "ids": [1, 2]})
    assert encoded.filename == "stats.json"
    assert json.loads(encoded.data) == {"n": 3, "mean": 1.5, "ids": [1, 2]}


def test_images_become_png() -> None:
    picture = png(np.random.default_rng(0).normal(size=(20, 30)))
    assert isinstance(picture, PNG) and picture.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(picture)).size == (30, 20)
    assert encode("preview", picture).filename == "preview.png"
    assert encode("raw_png", bytes(picture)).kind == "image"
    assert encode("pil", Image.new("RGB", (4, 4))).media_type == "image/png"
    coloured = png(np.arange(16.0).reshape(4, 4), cmap="viridis")
    assert Image.open(io.BytesIO(coloured)).mode == "RGB"
    with pytest.raises(ValueError, match="2D array"):
        png(np.zeros((2, 2, 2, 2)))


@pytest.mark.parametrize("key", ["../evil", "", "a/b", ".hidden", "x" * 101])
def test_result_names_must_be_file_names(key: str) -> None:
    with pytest.raises(AnalysisFailed, match="cannot be a file name"):
        encode(key, 1)


def test_unsupported_results_say_what_is_accepted() -> None:
    with pytest.raises(AnalysisFailed, match="NumPy array, a pandas DataFrame, a JSON-able value"):
        encode("thing", object())


def test_cap_names_both_sizes_and_the_hint() -> None:
    parts = [encode("a", np.zeros(20_000, np.uint8)), encode("b", np.zeros(100, np.uint8))]
    assert check_cap(parts, 20_000) == sum(len(p.data) for p in parts)
    with pytest.raises(ResultTooLarge) as error:
        check_cap(parts, 5_000)  # 5 kB and the allowance of 8 KiB for the job's record
    message = str(error.value)
    assert "total 20.4 kB" in message
    assert "cap of 13.2 kB (limits.max_result_bytes = 5.0 kB + 8.2 kB" in message
    assert "by 7.2 kB" in message
    assert "a: 20.1 kB" in message
    assert "reduce further" in message and "limits.max_result_bytes" in message


def test_cap_as_a_fraction_of_the_bytes_scanned() -> None:
    parts = [encode("a", np.zeros(13_000, np.uint8))]
    assert check_cap(parts, 1_000_000, fraction=0.5, scanned=20_000) == len(parts[0].data)
    with pytest.raises(ResultTooLarge) as error:
        check_cap(parts, 1_000_000, fraction=0.5, scanned=4_000)
    assert "cap of 10.2 kB (50% of the 4.0 kB it scanned + 8.2 kB" in str(error.value)
    allowance = RECORD_ALLOWANCE
    cap, source = result_cap(1_000, 0.5, 1_000_000)
    assert cap == 1_000 + allowance and source.startswith("limits.max_result_bytes = 1.0 kB")


def test_bundle_pack_skips_caches_and_extracts(tmp_path: Path) -> None:
    source = tmp_path / "code"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (source / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref")
    data = bundle.pack(source)
    names = bundle.check(data, max_bytes=1 << 20, max_unpacked_bytes=1 << 20)
    assert "pkg/__init__.py" in names and not any("__pycache__" in n or ".git" in n for n in names)
    target = bundle.extract(data, tmp_path / "out")
    assert (target / "pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert bundle.digest(data) == bundle.digest(bundle.pack(source))


def test_bundle_limits(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_bytes(b"#" * 50_000)
    data = bundle.pack(tmp_path)
    with pytest.raises(InvalidInput, match="over the limit of 10"):
        bundle.check(data, max_bytes=10, max_unpacked_bytes=1 << 20)
    with pytest.raises(InvalidInput, match="unpacks to more than 1,000 bytes"):
        bundle.check(data, max_bytes=1 << 20, max_unpacked_bytes=1000)
    with pytest.raises(InvalidInput, match="does not exist"):
        bundle.pack(tmp_path / "nope")


def test_symlinks_are_never_packed(tmp_path: Path) -> None:
    (tmp_path / "real.py").write_text("x = 1\n")
    (tmp_path / "link.py").symlink_to("/etc/passwd")
    with tarfile.open(fileobj=io.BytesIO(bundle.pack(tmp_path)), mode="r:gz") as tar:
        assert tar.getnames() == ["real.py"]


def test_context_opens_only_its_own_dataset(movie: tuple[Path, np.ndarray]) -> None:
    path, data = movie
    info = ArrayInfo(
        path="",
        shape=list(data.shape),
        dtype="uint16",
        chunks=[32, 16, 16],
        axes=["t", "y", "x"],
        zarr_format=3,
    )
    group_path = path.parent / "group.zarr"
    import zarr

    group = zarr.open_group(group_path, mode="w")
    group.create_array("labels", shape=(4,), chunks=(4,), dtype="i4")[:] = [1, 2, 3, 4]
    context = RunContext(
        job_id="j",
        dataset="d",
        array=info,
        selection={},
        params={},
        _dataset_url=group_path.as_uri(),
    )
    assert context.open_array("labels").compute().tolist() == [1, 2, 3, 4]
    for escape in ("../movie.zarr", "/etc", "s3://other/bucket", ""):
        with pytest.raises(PermissionDenied, match="only arrays inside dataset 'd'"):
            context.open_array(escape)
    with pytest.raises(FileNotFoundError, match="no array at 'missing'"):
        context.open_array("missing")
    assert context.axis("y") == 1
    with pytest.raises(KeyError):
        context.axis("z")


def test_runtime_imports_no_web_or_database_layers() -> None:
    import subprocess

    code = (
        "import sys, insitu.runtime.runner; "
        "web = ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'typer'); "
        "ours = ('insitu.api', 'insitu.db', 'insitu.services', 'insitu.cli'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in web or m.startswith(ours)]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
