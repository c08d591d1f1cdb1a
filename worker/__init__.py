"""The Celery worker: `worker.tasks.run_job` hands one job to `worker.run.execute_job`."""
