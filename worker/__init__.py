"""The Fusebox worker: arq WorkerSettings and the job functions."""
