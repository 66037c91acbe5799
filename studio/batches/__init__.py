"""The OpenAI Batch API on the studio's models: ``/v1/files`` holds batch inputs and outputs,
``/v1/batches`` runs a file of requests as a job of kind ``batch`` (docs/batch.md).

| module | job |
|---|---|
| ``files`` | file rows and their bytes in the artifact store; ownership; upload, list, delete |
| ``validation`` | the input file: file-level checks (a 400) and per-line checks (error entries) |
| ``queue`` | create (the job queued), read, list, cancel: what the API and the CLI share |
| ``state`` | the batch's statuses (diagram), what its job adds, the cancel rules |
| ``runner`` | the lines through the gateway, ``concurrency`` in flight, written as they finish |
| ``output`` | OpenAI's JSONL line shapes, stored lines, the output and error files |
| ``run`` | the job entrypoint ``python -m studio.batches.run --job-id N`` |
| ``views`` | the FileObject and Batch shapes the API answers |
"""

from studio.batches.queue import BatchCreate, cancel_batch, create_batch, get_batch, list_batches, view
from studio.batches.views import BatchList, BatchObject, FileDeleted, FileList, FileObject

__all__ = ["BatchCreate", "BatchList", "BatchObject", "FileDeleted", "FileList", "FileObject",
           "cancel_batch", "create_batch", "get_batch", "list_batches", "view"]
