"""Which TFLite interpreter to use: ai-edge-litert (the maintained successor), else tflite-runtime
(crashes beside numpy 2; fallback only). TensorFlow is never imported on this floor: the training
box gets ai-edge-litert with edgetl[train] too."""
from __future__ import annotations

from .errors import UserError
from .quiet import native_stderr


def interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise UserError("no TFLite interpreter installed: pip install 'edgetl[edge]' (ai-edge-litert)") from None


def load_interpreter(path, threads: int | None = None, content: bytes | None = None):
    """An allocated interpreter for ``path`` (from ``content``, its bytes, when given: then the
    file is not read again), or UserError naming the file."""
    Interpreter, _ = interpreter_class()
    source = {"model_content": content} if content is not None else {"model_path": str(path)}
    try:
        with native_stderr(replay=False):   # LiteRT announces its delegate on fd 2; errors say why below
            it = Interpreter(**source, num_threads=threads)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a usable .tflite model ({str(e).splitlines()[0][:120]}); "
                        "re-run `edgetl convert` or copy the file again") from None
    return it


def graph_report(it) -> dict:
    """Op counts, ops that stay float, and which ops run outside the XNNPACK delegate.

    A delegate node replaces a convex partition of the original graph: walking back from its
    outputs to its inputs finds the ops it covers; every other original op runs on the plain
    TFLite kernels."""
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {}
    for o in original:
        for t in o["outputs"]:
            producer[int(t)] = o["index"]
    covered = set()
    by_index = {o["index"]: o for o in original}
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            n = producer.get(stack.pop())
            if n is None or n in covered:
                continue
            covered.add(n)
            stack.extend(int(t) for t in by_index[n]["inputs"] if int(t) >= 0 and int(t) not in stop)
    counts: dict[str, int] = {}
    for o in original:
        counts[o["op_name"]] = counts.get(o["op_name"], 0) + 1
    details = {t["index"]: t for t in it.get_tensor_details()}

    def is_float(o):
        ts = [int(t) for t in list(o["inputs"]) + list(o["outputs"]) if int(t) >= 0 and int(t) in details]
        return any(details[t]["dtype"].__name__ in ("float32", "float16") for t in ts)

    boundary = ("QUANTIZE", "DEQUANTIZE")
    return {
        "ops": counts,
        "float_ops": sorted({o["op_name"] for o in original if o["op_name"] not in boundary and is_float(o)}),
        "not_delegated": sorted({o["op_name"] for o in original if o["index"] not in covered}),
        "delegate_partitions": len(delegates),
        "fully_delegated": bool(delegates) and len(covered) == len(original),
    }
