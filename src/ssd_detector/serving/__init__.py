"""Hosting: the Flask app (``app``), request and response formats (``codecs``), HTTP errors
(``errors``), settings from SageMaker's environment (``settings``) and gunicorn (``server``)."""
