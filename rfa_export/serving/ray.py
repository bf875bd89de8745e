"""The same server as a Ray Serve deployment: N replicas, each with its own engine (one scheduler over its own
batch), behind Ray's HTTP proxy, which spreads requests over them. pip install 'rfa-export[ray]'."""

import os
import time


def deployment(options: dict, replicas: int):
    """A bound Ray Serve application of `replicas` replicas serving the OpenAI completions API."""
    try:
        from ray import serve
    except ImportError:
        raise RuntimeError("--ray needs Ray Serve: pip install 'rfa-export[ray]'") from None
    from .app import make_app

    app = make_app()

    # a replica that asks for no GPU gets CUDA_VISIBLE_DEVICES="" from Ray: one GPU each on cuda
    gpus = {"ray_actor_options": {"num_gpus": 1}} if options.get("device") == "cuda" else {}

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=1024, **gpus)
    @serve.ingress(app)
    class RFACompletions:
        def __init__(self, options: dict):
            from .app import api_from_options, set_process_api

            self.api = api_from_options(options, fingerprint=f"rfa-export-replica-{os.getpid()}")
            self.api.engine.start()
            set_process_api(self.api)

        def __del__(self):
            self.api.engine.stop()

    return RFACompletions.bind(options)


def serve_with_ray(options: dict, replicas: int, host: str, port: int) -> int:
    """Start a local Ray cluster (or join RAY_ADDRESS's), run the deployment, serve until interrupted."""
    import sys

    import ray
    from ray import serve

    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(options, replicas), name="rfa-export", route_prefix="/")
    print(f"rfa-export: serving {options['model_name']!r} on Ray Serve, {replicas} replica(s), "
          f"http://{host}:{port}/v1/completions", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
    return 0
