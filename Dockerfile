# syntax=docker/dockerfile:1
# The seqpred server image (see docs/deploy.md).
#
#   docker build -t seqpred .                                                              # CPU
#   docker build --build-arg ORT_PACKAGE="onnxruntime-gpu[cuda,cudnn]>=1.21" -t seqpred:gpu .  # NVIDIA GPU
#
# The default model must be exported to service/default_model/ first (`seqpred export RUN --out
# service/default_model`); the build stops with a clear message when it is missing.
#
# Stage 1 builds a virtual environment holding the project and its runtime dependencies only (no dev, plot or
# test packages, no compilers); stage 2 copies that environment into a fresh slim image and runs it as a non-root
# user. Everything the container runs: `seqpred serve` (the entry point), `python -m service.healthcheck` (the
# HEALTHCHECK: asks grpc.health.v1 for SERVING) and `seqpred score` (batch jobs, see docker-compose.yml).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
# onnxruntime (CPU) by default; "onnxruntime-gpu[cuda,cudnn]>=1.21" brings the CUDA EP with CUDA 12 and cuDNN 9
# from NVIDIA's pip wheels, so the runtime image needs no CUDA base (the driver comes from the NVIDIA runtime).
ARG ORT_PACKAGE=onnxruntime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
RUN test -f service/default_model/model.json || { \
      echo "service/default_model/model.json is missing: export the default model before building" \
           "(seqpred export RUN --out service/default_model)" >&2; exit 1; }
# redis: the client of the shared session store (--store redis; the `redis` extra, listed here because the image
# installs no extras).
RUN pip install . "redis>=5" \
 && if [ "${ORT_PACKAGE}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "${ORT_PACKAGE}"; fi
# The default model is data, not Python code: copy it next to the installed package, where
# service.settings.DEFAULT_MODEL_DIR points. Run from / so that the installed package is imported, not /src.
WORKDIR /
RUN pkg="$(python -c 'import pathlib, service; print(pathlib.Path(service.__file__).parent)')" \
 && cp -r /src/service/default_model "${pkg}/default_model" \
 && python -c "import service.cli, service.scoring.cli, service.server, service.healthcheck" \
 && find /opt/venv -path '*/nvidia/*/lib' -type d > /opt/venv/nvidia-libs.conf \
 && python -m pip uninstall -y pip setuptools

FROM python:${PYTHON_VERSION}-slim AS runtime
COPY --from=build /opt/venv /opt/venv
# GPU build: let the dynamic loader find the CUDA/cuDNN libraries of NVIDIA's wheels (empty list on CPU).
RUN cp /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/zz-seqpred-nvidia.conf && ldconfig \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin seqpred \
 && mkdir -p /data && chown seqpred:seqpred /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQPRED_HOST=[::] \
    SEQPRED_PORT=50051 \
    SEQPRED_METRICS_PORT=9464 \
    SEQPRED_LOG_FORMAT=json
USER seqpred
WORKDIR /data
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "service.healthcheck"]
ENTRYPOINT ["seqpred"]
CMD ["serve"]
