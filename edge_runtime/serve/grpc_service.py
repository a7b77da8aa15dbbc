"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer), served beside HTTP by the same process,
on the same model pool, queue, API key and metrics (``edge-serve DEPLOY --grpc-port N``; extra
``edgetl[serve-grpc]``).

A ModelInfer request is read as its HTTP twin would be (serve.oip_codec): ``raw_input_contents``
are the binary tensor data of the inputs in order, ``contents`` the JSON ``data``; outputs always
answer as ``raw_output_contents``, as the protocol's clients expect. HTTP statuses map to gRPC
codes: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 503 RESOURCE_EXHAUSTED (a full
queue), 504 DEADLINE_EXCEEDED.
"""
from __future__ import annotations

import hmac
import time

import grpc

from . import inference_pb2 as pb
from .http import HTTPError
from .oip import answer_meta, infer, metadata, model_input, server_metadata
from .oip_codec import Output, bytes_tensor, parse_message, response_parts

SERVICE = "inference.GRPCInferenceService"
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         503: grpc.StatusCode.RESOURCE_EXHAUSTED, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
OPEN = ("ServerLive", "ServerReady")   # like /v2/health: no API key needed


class InferenceService:
    """The service's methods over a ServeState (``state``)."""

    def __init__(self, state):
        self.state = state

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request, context):
        self.state.check_model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**server_metadata())

    async def ModelMetadata(self, request, context):
        meta = metadata(self.state.name, self.state.check_model(request.name, request.version or None))
        tensors = lambda items: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in items]  # noqa: E731
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))

    async def ModelInfer(self, request, context):
        gen = self.state.check_model(request.model_name, request.model_version or None)
        doc, blob = as_message(request, self.state.cfg.max_body)
        req = parse_message(doc, blob, model_input(gen))
        req.outputs = [Output(o.name, True, o.top_k) for o in req.outputs]   # gRPC answers raw contents
        used, scores = await infer(self.state, req)
        answer, blobs = response_parts(req, scores, used.first.labels, answer_meta(self.state.name, used))
        return pb.ModelInferResponse(
            model_name=answer["model_name"], model_version=answer["model_version"], id=answer.get("id", ""),
            parameters={k: _parameter(v) for k, v in answer["parameters"].items()},
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=o["name"], datatype=o["datatype"], shape=o["shape"])
                     for o in answer["outputs"]],
            raw_output_contents=blobs)


def as_message(request, max_body: int) -> tuple[dict, bytes]:
    """A ModelInferRequest as the (JSON object, binary data) pair an HTTP request would carry."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise HTTPError(400, f"{len(raws)} raw_input_contents for {len(request.inputs)} input(s): give one per input")
    if sum(map(len, raws)) > max_body:
        raise HTTPError(413, f"inputs are over the --max-body limit of {max_body:,} bytes")
    inputs, blobs = [], []
    for k, t in enumerate(request.inputs):
        inp = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
               "parameters": {n: _value(v) for n, v in t.parameters.items()}}
        if raws:
            blobs.append(raws[k])
            inp["parameters"]["binary_data_size"] = len(raws[k])
        elif t.datatype == "BYTES":   # the encoded images as the binary BYTES form
            blob = bytes_tensor(list(t.contents.bytes_contents))
            blobs.append(blob)
            inp["parameters"]["binary_data_size"] = len(blob)
        else:
            inp["data"] = list(t.contents.fp32_contents if t.datatype == "FP32" else t.contents.uint_contents)
        inputs.append(inp)
    doc = {"inputs": inputs, "parameters": {n: _value(v) for n, v in request.parameters.items()},
           "outputs": [{"name": o.name, "parameters": {n: _value(v) for n, v in o.parameters.items()}}
                       for o in request.outputs]}
    if request.id:
        doc["id"] = request.id
    return doc, b"".join(blobs)


def _value(p):
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _parameter(v) -> pb.InferParameter:
    if isinstance(v, bool):
        return pb.InferParameter(bool_param=v)
    if isinstance(v, int):
        return pb.InferParameter(int64_param=v)
    if isinstance(v, float):
        return pb.InferParameter(double_param=v)
    return pb.InferParameter(string_param=str(v))


def _key_ok(context, key: str) -> bool:
    given = ""
    for name, value in context.invocation_metadata() or ():
        if name == "x-api-key":
            given = value
        elif name == "authorization" and value[:7].lower() == "bearer " and not given:
            given = value[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _handler(state, name: str, method, request_type):
    """One method: the API key, HTTPError -> its gRPC code, and the request metrics."""
    async def call(request, context):
        t, status = time.perf_counter(), 200
        try:
            if state.cfg.api_key and name not in OPEN and not _key_ok(context, state.cfg.api_key):
                raise HTTPError(401, "missing or wrong API key: send metadata `authorization: Bearer KEY` or "
                                     "`x-api-key: KEY`")
            return await method(request, context)
        except HTTPError as e:
            status = e.status
            await context.abort(CODES.get(e.status, grpc.StatusCode.INTERNAL), e.message)
        finally:
            if state.metrics is not None:
                state.metrics.observe("grpc_infer" if name == "ModelInfer" else "grpc", status, time.perf_counter() - t)
    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                               response_serializer=lambda m: m.SerializeToString())


REQUESTS = {"ServerLive": pb.ServerLiveRequest, "ServerReady": pb.ServerReadyRequest,
            "ModelReady": pb.ModelReadyRequest, "ServerMetadata": pb.ServerMetadataRequest,
            "ModelMetadata": pb.ModelMetadataRequest, "ModelInfer": pb.ModelInferRequest}


async def start(state, host: str, port: int):
    """The gRPC server on ``host:port`` in the running event loop; returns it (``await s.stop(g)``)."""
    service = InferenceService(state)
    handlers = {name: _handler(state, name, getattr(service, name), req) for name, req in REQUESTS.items()}
    limit = state.cfg.max_body + 64 * 1024   # the message's own fields beside the tensor bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server
