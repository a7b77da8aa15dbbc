"""Insight: see what a trained model sees (training side; TensorFlow/Keras, never on the device).

The Udacity seed looks inside the network (activations, filters, class-activation heatmaps) and
the AI-for-Beginners seed optimises images through it ("ideal cat", adversarial attacks). Each
tool here is a function that takes a `Subject` (a trained run, or a backbone's own ImageNet
classifier) and returns arrays plus metadata; `edgetl explain|activations|filters|dream|attack`
only save and print them.

Gradients are taken with TensorFlow (`tf.GradientTape`): a run trained on JAX is read back on
TensorFlow here, since `model.keras` does not depend on the backend that trained it.
"""
from .attack import AttackResult, attack, robustness_report
from .cam import Explanation, explain, explain_misclassified
from .dream import DreamResult, dream
from .features import activations, filter_patterns, first_conv_filters
from .optimize import total_variation
from .subject import Subject, open_imagenet, open_run

__all__ = ["Subject", "open_run", "open_imagenet", "Explanation", "explain", "explain_misclassified",
           "activations", "first_conv_filters", "filter_patterns", "DreamResult", "dream",
           "total_variation", "AttackResult", "attack", "robustness_report"]
