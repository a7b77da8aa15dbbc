"""edgetl: a folder of labelled photos -> a fast, small, verified classifier on the edge."""
__version__ = "0.1.0"
