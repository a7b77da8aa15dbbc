"""The model repository (reload the deploy folder and swap the model without dropping requests)
and the Prometheus metrics endpoint."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response


def router(state) -> APIRouter:
    """``state``: the app's ServeState."""
    router = APIRouter()

    @router.post("/v2/repository/models/{model}/load", summary="Re-read the deploy folder and swap the model")
    async def load(model: str):
        state.check_model(model)
        old, new = await state.reload()
        return {"name": state.name, "loaded": True, "version": str(new.number), "sha256": new.sha256,
                "previous_sha256": old.sha256}

    @router.post("/v2/repository/index")
    async def repo_index():
        gen = state.pool.current
        return [{"name": state.name, "version": str(gen.number), "state": "READY"}]

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    return router
