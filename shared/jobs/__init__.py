"""The job store in Redis: jobs, batches and their results (``store``, every multi-key change one Lua
script beside it), and a submission acknowledged only once on disk (``durability``).
"""
