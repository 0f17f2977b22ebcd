"""TWIST: self-supervised learning by estimating twin class distributions."""

__version__ = "0.1.0"
