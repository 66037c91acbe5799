"""Jobs: bursty work (training) run as Ray Jobs, tracked in the database.

State machine (one enum, one transition table; every transition is a ``job_events`` row)::

    QUEUED ──► STARTING ──► RUNNING ──► CHECKPOINTING ──► SUCCEEDED
                  ▲            │               │
                  │            ▼               ▼
               RETRYING ◄── FAILED (retryable, attempts left)
    any non-terminal ──► CANCELLED ;  any non-terminal ──► FAILED

``RUNNING ⇄ CHECKPOINTING``: a run reports checkpoints while it trains; the final one (the adapter
being registered) is the last CHECKPOINTING before SUCCEEDED. The package's README has the full
diagram, who moves each state, and why the scheduler is safe to restart.
"""
