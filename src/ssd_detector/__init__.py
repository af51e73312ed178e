"""SSD object detection as a SageMaker-compatible container."""
__version__ = "0.1.0"
