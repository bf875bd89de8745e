"""Serving: an OpenAI-compatible HTTP server over continuous batching (engine.py, app.py), the same app as a Ray
Serve deployment (ray.py), and a Triton Inference Server model repository (triton.py). FastAPI, uvicorn, Ray and
tritonclient are optional extras; importing this package imports none of them."""
