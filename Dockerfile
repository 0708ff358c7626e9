# The insitu server image (API and dispatcher), as the Helm chart runs it.
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t insitu:0.1.0 .
# Optional, in docker-build/: ca.crt (a CA bundle, behind a TLS-intercepting proxy) and
# constraints.txt (pins, e.g. of the environment you tested:
#   python -c "from insitu.images import constraints; print(constraints(), end='')").
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

COPY docker-build/ /tmp/build/
COPY pyproject.toml README.md /src/insitu/
COPY platform /src/insitu/platform
RUN if [ -f /tmp/build/ca.crt ]; then export PIP_CERT=/tmp/build/ca.crt; fi \
 && touch /tmp/build/constraints.txt \
 && pip install --no-cache-dir -c /tmp/build/constraints.txt "/src/insitu[postgres,s3,kubernetes]" \
 && rm -rf /src/insitu /tmp/build

# Never root; the chart mounts writable scratch at /tmp and the insitu home.
RUN useradd --uid 10001 --create-home insitu 2>/dev/null || adduser -D -u 10001 insitu
USER 10001
ENTRYPOINT ["insitu"]
CMD ["server", "--host", "0.0.0.0", "--port", "8000"]
