"""Executions: starting them, their lifecycle and events, and settling the ones whose workflow
ended without telling us."""
