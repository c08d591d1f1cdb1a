# Corral: one image for the API and the GPU workers.
#   docker build -t corral .
# The default Linux torch wheel from PyPI is CUDA-capable and also runs on CPU.
# Layers are ordered so that a code change (or an edit to pyproject.toml that leaves the
# dependency list alone) never reinstalls torch.

ARG PYTHON_IMAGE=python:3.11-slim

# --- 1. the dependency lists, taken from pyproject.toml ----------------------------------
# Only these files travel to the next stage; their content, not pyproject.toml's, decides
# whether the heavy install layers below are rebuilt.
FROM ${PYTHON_IMAGE} AS reqs
WORKDIR /reqs
COPY pyproject.toml ./
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; heavy = [d for d in deps if re.match(r'(torch|torchvision)\b', d)]; open('torch.txt', 'w').write('\n'.join(heavy) + '\n'); open('requirements.txt', 'w').write('\n'.join(d for d in deps if d not in heavy) + '\n')"

# --- 2. the runtime image: dependencies first, torch in its own layer, the code last -------
# A single stage on purpose: nothing is compiled (every dependency is a wheel), so there are no
# build tools to leave behind, and the multi-GB environment is never copied between stages.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="corral" \
      org.opencontainers.image.description="REST service for unsupervised image clustering (MMDC, IMC-SwAV)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=300 \
    CORRAL_DATA_DIR=/data \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --gid 10001 corral \
 && useradd --uid 10001 --gid corral --home-dir /home/corral --create-home \
      --shell /usr/sbin/nologin corral \
 && mkdir -p /data \
 && chown corral:corral /data \
 && python -m venv /opt/venv \
 && pip install --no-cache-dir "pip>=24" "setuptools>=68" "wheel>=0.43"
COPY --from=reqs /reqs/torch.txt /tmp/torch.txt
RUN pip install --no-cache-dir -r /tmp/torch.txt
COPY --from=reqs /reqs/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
WORKDIR /app
# the code last: only this layer and the next change when the code does. Installed in place
# (--editable) so that non-Python files the code reads at run time (migrations/alembic.ini,
# ...) are found next to the modules; the tree is root-owned and read-only to the service.
COPY . /app
RUN pip install --no-cache-dir --no-deps --no-build-isolation --editable /app \
 && rm -rf /app/build /app/*.egg-info \
 && corral --help > /dev/null
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# compose overrides the command per service (api, worker, migrate)
CMD ["corral", "api", "--host", "0.0.0.0", "--port", "8000"]
