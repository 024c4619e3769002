"""Shared pieces of the control plane: settings, logging, the CLI and the dev stack."""

VERSION = "0.3.0"
SERVICE_NAME = "agent-control-plane"
