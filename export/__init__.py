"""export: stitch a MACH run's repetitions into one SavedModel for TensorFlow Serving, and
build request bodies for it.

Public API::

    from export import export_model, ExportError
    from export import rest_body, rest_json, grpc_request, response_outputs
    from export import text_queries, text_examples
"""

from export.client import (grpc_request, response_outputs, rest_body, rest_json, text_examples,
                           text_queries)
from export.stitch import ExportError, ExportResult, export_model, existing_versions

__all__ = ["ExportError", "ExportResult", "existing_versions", "export_model",
           "grpc_request", "response_outputs", "rest_body", "rest_json", "text_examples",
           "text_queries"]
