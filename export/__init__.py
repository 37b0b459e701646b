"""export: stitch a MACH run's repetitions into one SavedModel for TensorFlow Serving.

Public API::

    from export import export_model, ExportError
"""

from export.stitch import ExportError, ExportResult, export_model, existing_versions

__all__ = ["ExportError", "ExportResult", "existing_versions", "export_model"]
