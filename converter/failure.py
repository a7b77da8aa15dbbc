"""A converter failure as one line a user can act on. The MLIR converter reports a rejected graph
as hundreds of lines (one per op, with fused TensorFlow call-site locations); the user needs the
first op it rejected, the Keras layer it came from and why. The full text goes to a log file."""
from __future__ import annotations

import re
from pathlib import Path

from edge_runtime import atomic

LOG_NAME = "deploy.log"

# loc(callsite(fused["Conv2D:", "edgetl_x_1/model_1/Conv1_1/convolution@__inference..."] ...)): error: 'tf.Conv2D' op ...
_OP_ERROR = re.compile(r"""fused\["(?P<kind>[\w.]+):",\s*"(?P<where>[^"@]+)@[^\]]*\]"""
                       r""".*?error:\s*'(?P<op>[\w.]+)' op (?P<why>[^\n]*?)(?:$|\n|loc\()""", re.S)


def summarize(text: str) -> str:
    """``text``: the converter's exception text and native log. Returns e.g. "op tf.Conv2D of
    layer Conv1 (and 41 more ops) is neither a custom op nor a flex op; the graph computes in
    bfloat16" or, when nothing is recognised, the first line of the text (shortened)."""
    hits = list(_OP_ERROR.finditer(text))
    if not hits:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")
        return first[:200]
    first = hits[0]
    ops = {(h["op"], h["where"]) for h in hits}
    more = f" (and {len(ops) - 1} more op(s))" if len(ops) > 1 else ""
    why = first["why"].strip().rstrip(".")
    hint = ("; the graph computes in bfloat16/float16, which TFLite's builtin ops do not take"
            if re.search(r"tensor<[^>]*x(bf16|f16)>", text) else "")
    return f"op {first['op']} of layer {layer_name(first['where'])}{more} {why}{hint}"


def layer_name(where: str) -> str:
    """The Keras layer in a TensorFlow op path: "edgetl_m_1/mobilenetv2_1/Conv1_1/convolution"
    -> "Conv1" (the op name and Keras' "_1" call suffixes dropped)."""
    parts = [p for p in where.split("/") if p]
    name = parts[-2] if len(parts) >= 2 else (parts[0] if parts else where)
    return re.sub(r"_\d+$", "", name)


def write_log(folder: Path, title: str, text: str) -> Path:
    """The converter's full output, for --verbose-less runs that fail: RUN/deploy.log."""
    path = Path(folder) / LOG_NAME
    atomic.write_text(path, f"{title}\n\n{text}")
    return path
