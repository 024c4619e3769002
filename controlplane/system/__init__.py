"""The system worker: the control plane's own Temporal worker, on an internal task queue in the
control plane's namespace. It holds database access and runs the workflows the control plane
owns (housekeeping, task planning, plan executions and user-defined workflows; schedules and
webhook deliveries build on it), whose activities call the same use cases the routes call."""
