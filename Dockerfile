# The nearline service image: the `nearline` CLI with everything the job and the standardizers need
# (Beam's FnApiRunner, onnxruntime, kafka-python; no Java: the job reads Kafka with kafka-python).
# The training extra (torch) is not installed: train on a workstation, ship the ONNX packages.
#
#   docker build -t nearline .
#   docker run --rm nearline nearline --help
#
# docker-compose.yml runs this image as the job and the four standardizers.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# the dependencies first, in a layer that only changes with pyproject.toml
COPY pyproject.toml README.md ./
RUN pip install $(python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")

# the code, contracts, config and the registered model packages
COPY nearline nearline
COPY beam_jobs beam_jobs
COPY models models
COPY schemas schemas
COPY nearline.yaml ./
COPY deploy deploy
# editable, so that nearline.REPO_ROOT is /app (schemas/, models/ and nearline.yaml live there)
RUN pip install --no-deps -e .

# an unprivileged user; /app/data holds the generated marketplace (a volume in docker-compose.yml)
RUN useradd --create-home --uid 10001 nearline && mkdir -p /app/data /app/.nearline && chown -R nearline /app/data /app/.nearline
USER nearline

# metrics, /healthz, /readyz of `nearline run` (job.metrics_port)
EXPOSE 9464
CMD ["nearline", "--help"]
