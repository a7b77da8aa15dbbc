"""edgetl's converter: a trained run -> verified .tflite artifacts + labels + manifest."""
