"""tag-engine's tag plugins evaluated over Arrow record batches.

`Evaluator` (the native module, `tag_engine_spark._native`) loads the
plugins with tag-server's trust checks and evaluates batches;
`tag_engine_spark.job` is the PySpark job that runs it in executors.
See spark/README.md.
"""
from ._native import API_VERSION, Evaluator

__all__ = ["API_VERSION", "Evaluator"]
