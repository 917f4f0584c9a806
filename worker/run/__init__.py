"""Running a job in a worker process: the Celery app and task, processing, results on disk."""
