"""insitu: send the analysis to the data, return only the answer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("insitu")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["Client", "Output", "__version__"]


def __getattr__(name: str) -> object:
    # The client pulls in httpx; import it lazily so the runtime stays light.
    if name == "Client":
        from insitu.client import Client

        return Client
    if name == "Output":  # an analysis' large array kept next to the data
        from insitu.runtime.outputs import Output

        return Output
    raise AttributeError(name)
