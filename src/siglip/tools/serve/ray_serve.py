"""`siglip serve --ray`: the serving app (`create_app`) deployed on Ray Serve as `replicas` replicas.

Each replica is a Ray actor that loads the model (and opens the index, memory-mapped, from storage every node
can read) and runs the same FastAPI app with its own dynamic batching; Ray Serve's HTTP proxy spreads the
requests over the replicas. One replica per GPU when the cluster has GPUs, else replicas of one CPU each.
"""

from __future__ import annotations

import os
from typing import Any

from ..deps import require
from ..embeddings.options import ModelOptions
from .settings import ServeSettings

APP_NAME = "siglip"


def deploy(
    model: str,
    index: str | os.PathLike | None,
    settings: ServeSettings,
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    model_options: ModelOptions | None = None,
) -> Any:
    """Start (or join, with `address`) a Ray cluster and deploy the app on it; returns the app's handle.

    `model_options` are how each replica loads the model (`Embedder.from_pretrained`).
    """
    ray = require("ray", "ray", "siglip serve --ray")
    serve = require("ray.serve", "ray", "siglip serve --ray")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    index = os.path.abspath(index) if index is not None else None

    def build_app() -> Any:  # runs in each replica
        from ..embeddings.embedder import Embedder
        from .app import create_app

        return create_app(Embedder.from_pretrained(model, options=model_options), index, settings)

    deployment = serve.deployment(
        serve.ingress(build_app)(),
        name=APP_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1},
        max_ongoing_requests=settings.max_queue,  # the app's own queue bound answers 503 beyond it
    )
    serve.start(http_options={"host": host, "port": port})
    return serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    """Remove the deployment and stop Ray Serve (the cluster stays as it was)."""
    require("ray.serve", "ray", "siglip serve --ray").shutdown()
