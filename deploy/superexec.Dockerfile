# SuperExec image for fedmask: Flower's official SuperExec plus this project and
# its dependencies (CPU torch), so that ServerApp and ClientApp processes can run.
# Build from the repository root: docker build -f deploy/superexec.Dockerfile -t fedmask-superexec .
FROM flwr/superexec:1.41.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedmask ./fedmask
COPY strategies ./strategies
COPY server_app.py client_app.py ./
RUN python -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu .
ENTRYPOINT ["flower-superexec"]
