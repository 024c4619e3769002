"""Runs of a graph of steps: plan executions (plans.py) and user-defined workflows
(definitions.py), orchestrated on the system worker (workflows/runs.py). The graph's checks
(graph.py), the run's records (records.py), what the system worker's activities do to the steps
(steps.py), and the user's actions on a run (control.py)."""
