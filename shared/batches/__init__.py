"""Batch concerns beside the job store: uploaded input files (``files``) and re-running a finished
batch's failed lines (``retry``, its Lua script beside it).
"""
