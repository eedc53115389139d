# The BONBID-HIE 2023 algorithm container (SPEC 11): one case per run, no network.
#
#   docker build -t hie-ref --build-arg CHECKPOINTS=runs/study-cv/runs/tversky_hdt .
#   docker run --rm --network none -v "$PWD/test/input:/input:ro" -v "$PWD/test/output:/output" hie-ref
#
# CHECKPOINTS: a best.pt, or a directory whose best.pt files (e.g. a loss's fold runs) form the
# ensemble. The default base is a slim CPython; torch comes from requirements.txt, or from the
# wheel index named by TORCH_INDEX_URL (a CPU-only build makes a smaller image). For a GPU, build
# on a CUDA base image with Python 3.11: --build-arg BASE=<that image>.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG CHECKPOINTS=checkpoints
ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLCONFIGDIR=/tmp
WORKDIR /opt/app
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        python -m pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$(grep '^torch==' requirements.txt)"; \
    fi && python -m pip install --no-cache-dir -r requirements.txt
COPY *.py ./
COPY ${CHECKPOINTS} /opt/app/checkpoints
ENTRYPOINT ["python", "hie_ref.py", "predict", "--checkpoint", "/opt/app/checkpoints", "--grand-challenge", \
            "--input", "/input", "--output", "/output"]
