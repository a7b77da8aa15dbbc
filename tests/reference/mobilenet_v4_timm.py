"""Reference outputs of timm's own MobileNetV4-Conv models for tests/test_mobilenet_v4.py: each
variant built by timm (no pretrained weights), given seeded random weights in its own key layout
(tests/reference/seeded_weights.py), run on a seeded input. Writes, per variant, the key list with
shapes and the logits. Run once in an environment with torch and timm (not edgetl's):

    python -m venv /tmp/timm && /tmp/timm/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31
    /tmp/timm/bin/python tests/reference/mobilenet_v4_timm.py tests/reference
"""
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeded_weights import seeded_input, seeded_state_dict  # noqa: E402

SIZE = 96


def main(out: Path) -> None:
    torch.set_grad_enabled(False)
    for variant in ("small", "medium", "large"):
        model = timm.create_model(f"mobilenetv4_conv_{variant}", pretrained=False).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        sd = seeded_state_dict(shapes)
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
        x = seeded_input(SIZE)
        logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        (out / f"mobilenet_v4_conv_{variant}_keys.json").write_text(json.dumps(shapes))
        np.savez_compressed(out / f"mobilenet_v4_conv_{variant}_logits.npz", logits=logits, size=SIZE,
                            timm=timm.__version__, torch=torch.__version__)
        print(variant, sum(int(np.prod(s)) for s in shapes.values()), "parameters; logits", logits.shape,
              f"|max| {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
