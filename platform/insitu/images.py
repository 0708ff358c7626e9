"""Analysis images: check that an image can run insitu jobs, and build one from a directory.

An analysis image is any image with Python 3.10+ and the insitu runtime. ``insitu image
build DIR`` puts the runtime's source in ``.insitu/`` of the build context, so a
Dockerfile installs it with the lines in :data:`RUNTIME_LINES`; a host CA bundle, when
given, goes there too (``PIP_CERT``) for builds behind a TLS-intercepting proxy.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from insitu import __version__
from insitu.errors import BackendError, InvalidInput

MIN_PYTHON = (3, 10)
RUNTIME_DIR = ".insitu"
RUNTIME_LINES = (
    "ARG PIP_CERT\n"
    f"COPY {RUNTIME_DIR} /opt/insitu\n"
    'RUN pip install --no-cache-dir -c /opt/insitu/constraints.txt "/opt/insitu/runtime[s3]"'
)
LABEL_RUNTIME = "insitu.io/runtime-version"

# Runs inside the image with any Python, old ones included, to say what it has.
PROBE = """
import json, sys
info = {"python": "%d.%d.%d" % tuple(sys.version_info[:3])}
if sys.version_info >= (3, 10):
    try:
        import insitu, insitu.runtime.runner, insitu.relay
        info["insitu"] = insitu.__version__
    except Exception as exc:
        info["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(info))
"""


@dataclass(frozen=True)
class ImageInfo:
    """What a job records of the image it ran in."""

    name: str
    id: str  # the content digest of the image's configuration (sha256:...)
    digest: str  # a registry digest when the image has one, else the id
    python: str
    insitu: str


def docker_client(base_url: str | None = None) -> Any:
    """A Docker SDK client, or a :class:`BackendError` that says how to start the engine."""
    try:
        import docker
    except ImportError:
        raise BackendError(
            "the docker backend needs the Docker SDK: pip install 'insitu[docker]'"
        ) from None

    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except Exception as exc:
        where = base_url or "the local Docker engine (DOCKER_HOST or /var/run/docker.sock)"
        raise BackendError(
            f"cannot reach {where}: {exc}. Start it (e.g. 'dockerd &' or 'systemctl start "
            "docker') or set INSITU_DOCKER__BASE_URL"
        ) from None
    return client


def _missing_runtime(name: str, python: str, error: str) -> InvalidInput:
    return InvalidInput(
        f"image {name!r} has Python {python} but not the insitu runtime ({error}); add these "
        f"lines to its Dockerfile and rebuild it with 'insitu image build DIR --tag {name}':\n"
        + RUNTIME_LINES
    )


def inspect_image(client: Any, name: str, *, user: str, pull: bool = False) -> ImageInfo:
    """Check that ``name`` can run insitu jobs; :class:`InvalidInput` says why it cannot."""
    import docker.errors

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        if not pull:
            raise InvalidInput(
                f"image {name!r} is not on this server's Docker engine; build it there with "
                f"'insitu image build DIR --tag {name}' (or let the server pull images: "
                "INSITU_DOCKER__PULL=true)"
            ) from None
        try:
            image = client.images.pull(name)
        except docker.errors.APIError as exc:
            raise InvalidInput(f"image {name!r} could not be pulled: {exc.explanation}") from None
    try:
        output = client.containers.run(
            image.id,
            entrypoint=["python", "-c", PROBE],
            command=[],
            remove=True,
            network_mode="none",
            user=user,
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit="1g",
            labels={"insitu.io/component": "image-check"},
        )
    except docker.errors.ContainerError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise InvalidInput(
            f"image {name!r} cannot run Python: {detail[-1] if detail else exc}; insitu needs "
            f"Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer with the insitu runtime"
        ) from None
    except docker.errors.APIError as exc:
        text = str(exc.explanation or exc)
        if "executable file not found" in text or "no such file or directory" in text:
            raise InvalidInput(
                f"image {name!r} has no 'python' command on its PATH; insitu needs Python "
                f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer with the insitu runtime (build it "
                "FROM a Python image)"
            ) from None
        raise BackendError(f"could not check image {name!r}: {text}") from None
    try:
        info = json.loads(output.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InvalidInput(f"image {name!r}: 'python' did not behave like Python") from None
    python = info["python"]
    if tuple(int(p) for p in python.split(".")[:2]) < MIN_PYTHON:
        raise InvalidInput(
            f"image {name!r} has Python {python}; insitu's runtime needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer: build the image FROM a newer Python"
        )
    if "error" in info:
        raise _missing_runtime(name, python, info["error"])
    digests = image.attrs.get("RepoDigests") or []
    return ImageInfo(
        name=name,
        id=image.id,
        digest=digests[0] if digests else image.id,
        python=python,
        insitu=info["insitu"],
    )


# -- building -----------------------------------------------------------------------------


def _source_tree() -> Path | None:
    """The insitu source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "insitu"' in pyproject.read_text():
        return root
    return None


def _generated_pyproject() -> str:
    """A pyproject for an installed (non-editable) insitu, from its own metadata."""
    base: list[str] = []
    extras: dict[str, list[str]] = {}
    for requirement in metadata.requires("insitu") or []:
        spec, _, marker = requirement.partition(";")
        if "extra ==" in marker:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
            extras.setdefault(extra, []).append(spec.strip())
        else:
            base.append(spec.strip())
    return (
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "insitu"\nversion = "{__version__}"\nrequires-python = ">=3.10"\n'
        f"dependencies = {json.dumps(base)}\n[project.optional-dependencies]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in extras.items())
        + '[tool.setuptools.packages.find]\nwhere = ["src"]\n'
        '[tool.setuptools.package-data]\ninsitu = ["py.typed", "db/migrations/**/*"]\n'
    )


def constraints() -> str:
    """Pins of this environment's packages: an image gets the versions the server runs."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "insitu":
            pins[name.lower()] = f"{name}=={dist.version}"
    return "".join(f"{pins[k]}\n" for k in sorted(pins))


def _skip(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def _add_tree(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    for path in sorted(source.rglob("*")):
        if not _skip(path.relative_to(source)) and (path.is_file() or path.is_dir()):
            tar.add(
                path, arcname=f"{arcname}/{path.relative_to(source).as_posix()}", recursive=False
            )


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime = len(data), 0o644, 0
    tar.addfile(member, io.BytesIO(data))


def build_context(directory: Path, ca_bundle: Path | None = None, *, pin: bool = True) -> bytes:
    """The build context: ``directory`` plus the runtime (and CA bundle) under ``.insitu/``.

    With ``pin``, the runtime's dependencies are pinned to this environment's versions
    (``.insitu/constraints.txt``), which also spares pip a long resolution.
    """
    import insitu

    directory = Path(directory)
    if not (directory / "Dockerfile").is_file():
        raise InvalidInput(f"{directory} has no Dockerfile; an analysis image is built from one")
    if RUNTIME_DIR not in (directory / "Dockerfile").read_text():
        raise InvalidInput(
            f"{directory / 'Dockerfile'} does not install the insitu runtime; add these lines "
            f"after its FROM:\n{RUNTIME_LINES}"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if relative.parts[0] in (RUNTIME_DIR, ".git", ".venv") or _skip(relative):
                continue
            if path.is_file() or path.is_dir():
                tar.add(path, arcname=relative.as_posix(), recursive=False)
        source = _source_tree()
        runtime = f"{RUNTIME_DIR}/runtime"
        if source is not None:
            for name in ("pyproject.toml", "README.md"):
                tar.add(source / name, arcname=f"{runtime}/{name}")
            _add_tree(tar, source / "platform" / "insitu", f"{runtime}/platform/insitu")
        else:
            _add_bytes(tar, f"{runtime}/pyproject.toml", _generated_pyproject().encode())
            _add_tree(tar, Path(insitu.__file__).parent, f"{runtime}/src/insitu")
        _add_bytes(tar, f"{RUNTIME_DIR}/constraints.txt", (constraints() if pin else "").encode())
        if ca_bundle is not None:
            if not ca_bundle.is_file():
                raise InvalidInput(f"CA bundle {ca_bundle} does not exist")
            tar.add(ca_bundle, arcname=f"{RUNTIME_DIR}/ca.crt")
    return buffer.getvalue()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    seconds: float


def _stream(chunks: Iterator[dict[str, Any]], on_line: Callable[[str], None]) -> str:
    image_id = ""
    for chunk in chunks:
        if "error" in chunk:
            raise InvalidInput(f"the image build failed: {chunk['error'].strip()}")
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                if line.strip():
                    on_line(line)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
    return image_id


def build(
    client: Any,
    directory: Path,
    tag: str,
    *,
    build_args: dict[str, str] | None = None,
    ca_bundle: Path | None = None,
    network: str = "host",
    pin: bool = True,
    nocache: bool = False,
    on_line: Callable[[str], None] = lambda line: None,
) -> BuiltImage:
    """Build the analysis image in ``directory`` as ``tag``; ``on_line`` gets the build log."""
    started = time.perf_counter()
    context = build_context(directory, ca_bundle, pin=pin)
    args = dict(build_args or {})
    if ca_bundle is not None:
        args.setdefault("PIP_CERT", "/opt/insitu/ca.crt")
    chunks = client.api.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        tag=tag,
        buildargs=args,
        rm=True,
        forcerm=True,
        nocache=nocache,
        decode=True,
        network_mode=network,
        labels={LABEL_RUNTIME: __version__},
    )
    image_id = _stream(chunks, on_line)
    if not image_id:
        image_id = client.images.get(tag).id
    return BuiltImage(tag=tag, id=image_id, seconds=time.perf_counter() - started)
