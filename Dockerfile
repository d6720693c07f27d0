# syntax=docker/dockerfile:1
# contrareg-bids: the BIDS-App and its training tools in one image (docs/containers.md).
#
#   docker build -t contrareg-bids:0.1.0.dev0-cuda .                   # CUDA build of PyTorch
#   docker build --build-arg TORCH_VARIANT=cpu -t contrareg-bids:0.1.0.dev0-cpu .
#
# Stages: base (Python, an empty virtual env) -> templates (TemplateFlow prefetch, cached
# apart from the source) and torch-cpu | torch-cuda (PyTorch from constraints.txt) ->
# runtime (the package from this source tree, the templates, a non-root user).
# The run needs no network: templates are in /opt/templateflow, TEMPLATEFLOW_AUTOUPDATE=0.

ARG TORCH_VARIANT=cuda
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
# libgomp: OpenMP runtime of ITK/antspyx and SimpleITK wheels.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

# ---------------------------------------------------------------------------------------------
FROM base AS templates
ARG TEMPLATEFLOW_VERSION=25.1.2
# TEMPLATE or TEMPLATE:cohort-N[,M]; every cohort when none is given.
ARG TEMPLATES="dhcpVol MNIInfant:cohort-1 UNCInfant:cohort-1"
ENV TEMPLATEFLOW_HOME=/opt/templateflow
COPY containers/fetch_templates.py /usr/local/bin/fetch_templates.py
# TEMPLATES is split into words on purpose (one specification per word). The script exits
# 1 when a wanted file is still an empty placeholder: a failed download fails the build.
# hadolint ignore=SC2086
RUN pip install --no-cache-dir "templateflow==${TEMPLATEFLOW_VERSION}" \
    && python /usr/local/bin/fetch_templates.py --prune ${TEMPLATES} \
    && chmod -R a+rX /opt/templateflow

# ---------------------------------------------------------------------------------------------
FROM base AS torch-cpu
COPY constraints.txt /tmp/constraints.txt
# The CPU wheel of the torch version pinned in constraints.txt (PyPI's Linux wheel is CUDA).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        -c /tmp/constraints.txt torch

FROM base AS torch-cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY constraints.txt /tmp/constraints.txt
# PyPI's Linux wheel brings its CUDA libraries; the host needs only the NVIDIA driver.
RUN pip install --no-cache-dir -c /tmp/constraints.txt torch

# ---------------------------------------------------------------------------------------------
# torch-cpu or torch-cuda: a stage above, not an image to tag.
# hadolint ignore=DL3006
FROM torch-${TORCH_VARIANT} AS runtime
ARG TORCH_VARIANT
# Keep in step with contrareg_bids.__version__ (tests/cli/test_containers.py checks it).
ARG VERSION=0.1.0.dev0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

COPY setup.cfg pyproject.toml README.md constraints.txt /tmp/src/
COPY contrareg_bids /tmp/src/contrareg_bids
RUN pip install --no-cache-dir -c /tmp/src/constraints.txt "/tmp/src[demo]" \
    && rm -rf /tmp/src /tmp/constraints.txt \
    && NIPYPE_NO_ET=1 python -c "import contrareg_bids.cli.run, contrareg_bids.interfaces, roiloc"

COPY --from=templates /opt/templateflow /opt/templateflow
COPY --chmod=0755 containers/entrypoint.sh /usr/local/bin/contrareg-entrypoint

# A non-root user with a writable HOME; /work is writable by any uid (docker --user).
RUN useradd --create-home --home-dir /home/contrareg --uid 1000 --shell /bin/bash contrareg \
    && install -d -m 1777 /work

LABEL org.opencontainers.image.title="contrareg-bids" \
      org.opencontainers.image.description="ContraReg multi-modality (T1w <-> T2w) registration of neonatal brain MRI, as a BIDS-App (${TORCH_VARIANT} build of PyTorch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Threads: the participant level sets them per node (--omp-nthreads); raise these for
# contrareg-train on CPU (docker run -e OMP_NUM_THREADS=8, apptainer --env ...).
ENV TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    HOME=/home/contrareg \
    CONTRAREG_CONTAINER=docker:contrareg-bids:${VERSION}-${TORCH_VARIANT}

USER 1000
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/contrareg-entrypoint"]
CMD ["--help"]
