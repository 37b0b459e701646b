"""export: stitch a MACH run's repetitions into one SavedModel for TensorFlow Serving, and
build request bodies for it. The top layer of the project: it imports ``mach_tf`` and
``tfrecords_tools``; of ``mach_tf`` only the command line and its demo import it.

Modules: :mod:`~export.stitch` (run -> versioned SavedModel, refusals),
:mod:`~export.classifier_export` (a fitted MachClassifier -> versioned SavedModel),
:mod:`~export.signatures` (the serving graph), :mod:`~export.verification` (the check
before publishing), :mod:`~export.warmup` (TensorFlow Serving warmup records),
:mod:`~export.client` (REST and gRPC request bodies), :mod:`~export.serving_protos`
(TensorFlow Serving's request protos in their wire format, without its Python package).

Public API::

    from export import export_model, ExportError
    from export import export_classifier      # a fitted mach_tf.MachClassifier
    from export import rest_body, rest_json, grpc_request, response_outputs
    from export import text_queries, text_examples
"""

from export.classifier_export import export_classifier
from export.client import (grpc_request, response_outputs, rest_body, rest_json, text_examples,
                           text_queries)
from export.stitch import ExportResult, existing_versions, export_model
from export.verification import ExportError

__all__ = ["ExportError", "ExportResult", "existing_versions", "export_classifier",
           "export_model", "grpc_request", "response_outputs", "rest_body", "rest_json",
           "text_examples", "text_queries"]
