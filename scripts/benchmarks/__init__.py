"""The project's benchmarks, one module each, run as ``python scripts/bench.py NAME`` (``make
bench-NAME``). Their shared parts are in ``common``; scoring, metric lines and job trees come from
the package itself (``ssd_detector.evaluation``, ``training.metrics``, ``sagemaker_env``)."""
