"""edge-serve: a deploy folder as a small HTTP service on the device (extra ``edgetl[serve]``:
FastAPI + uvicorn + prometheus-client; no TensorFlow)."""
