"""Dev-only tooling: the `controlplane dev` stack (stack.py), how it watches and restarts its
processes (supervise.py), the dev.json through which the CLI finds a running one (record.py),
and the fake Anthropic server (fake_anthropic.py). Nothing in the API or the worker imports this
package; the servers it shares with the test fixtures are started by controlplane.services."""
