"""Persistence shared by the API and the worker: settings, database, blobs, the queue."""
