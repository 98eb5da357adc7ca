"""fastmlic: multi-label image classification built around its data pipeline."""

__version__ = "0.1.0"
